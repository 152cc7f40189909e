"""What the CPU computes natively, for the choices that depend on it (the embedding model's
precision, the local model server's weights)."""

from __future__ import annotations

import functools
from pathlib import Path

_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (AMX tiles or AVX512-BF16): Linux's cpuinfo
    flags (this machine's unless `cpuinfo` is given); elsewhere unknown, so no."""
    text = _this_machine_cpuinfo() if cpuinfo is None else cpuinfo
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return bool(_BF16_CPU_FLAGS & set(flags))


@functools.cache
def _this_machine_cpuinfo() -> str:
    # Read once per process: every question resolves the model server's weights through it.
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
