"""The machine a run trained on: the CPU's name, its logical cores and its bf16 units.

Every epoch line of metrics.jsonl, final.json and every benchmark result name it. The same
torch build trains a spec epoch in about 100 s on a Xeon with AMX (bf16) and about 1,200 s
on an EPYC with AVX2 only (fp32), so a time means little without the CPU it was measured
on; a run resumed on another machine says so epoch by epoch. torch is not imported here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from typing import Any

CPUINFO = "/proc/cpuinfo"


@functools.cache
def machine(cpuinfo: str = CPUINFO) -> dict[str, Any]:
    """``{"cpu", "logical_cores", "amx_bf16", "avx512_bf16"}`` of this machine.

    Read from ``cpuinfo`` where it exists (Linux): the first processor's model name and
    flags. Elsewhere the name is what ``platform`` says and both bf16 units read False.
    """
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open(cpuinfo) as f:
        for line in f:  # the first processor's "model name" comes before its "flags"
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {
        "cpu": name,
        "logical_cores": os.cpu_count(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
    }


def describe(machine: dict[str, Any]) -> str:
    """One line for a person: "AMD EPYC, 2 logical cores, AVX512-BF16" ("no bf16 units")."""
    units = [
        u for k, u in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if machine.get(k)
    ]
    cores = machine.get("logical_cores")
    return ", ".join(
        [str(machine.get("cpu") or "unknown CPU")]
        + ([f"{cores} logical cores"] if cores else [])
        + [" and ".join(units) or "no bf16 units"]
    )
