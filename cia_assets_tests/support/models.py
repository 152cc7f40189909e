"""The models test configs serve."""

from __future__ import annotations

TINY_MODEL = "SmolLM2-135M-Instruct"
