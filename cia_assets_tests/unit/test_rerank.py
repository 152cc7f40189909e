"""The re-ranker's arithmetic and the rule that decides what leaves the machine."""

from __future__ import annotations

import math

import pytest

from cia_assets.lib.retrieval.rerank import yes_probability
from cia_assets.lib.serving.model_endpoints import is_loopback_url


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([("yes", math.log(0.6)), ("no", math.log(0.2))], 0.75),
        # Spellings of one answer add up: "Yes", " yes" and "yes" are one yes.
        (
            [("Yes", math.log(0.3)), (" yes", math.log(0.1)), ("no", math.log(0.4)), ("No", math.log(0.2))],
            0.4,
        ),
        ([("The", math.log(0.9)), ("no", math.log(0.05))], 0.0),
        ([("The", math.log(0.9))], 0.5),  # neither word among the candidates: no evidence
        ([], 0.5),
    ],
)
def test_yes_probability(candidates: list[tuple[str, float]], expected: float) -> None:
    assert yes_probability(candidates) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.5.0.1/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://10.0.0.5:8000/v1", False),  # a private range is another machine
        ("http://192.168.1.20/v1", False),
        ("https://api.openai.com/v1", False),
        ("http://vllm.cia.svc:8000/v1", False),
        ("http://localhost.example.com/v1", False),
        ("http://api.localhost/v1", False),  # not pinned to loopback by every resolver
        ("not a url", False),
    ],
)
def test_which_endpoints_are_on_this_machine(url: str, local: bool) -> None:
    assert is_loopback_url(url) is local
