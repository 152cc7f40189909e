"""What the CPU computes natively, for the choices that depend on it (the embedding model's
precision, the local model server's weights)."""

from __future__ import annotations

from pathlib import Path

_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (AMX tiles or AVX512-BF16): Linux's cpuinfo
    flags; elsewhere unknown, so no."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []
    )
    return bool(_BF16_CPU_FLAGS & set(flags))
