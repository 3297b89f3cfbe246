"""Where the benchmark scripts record their figures: results/<date>-<device>-<what>.json.

Also how they refuse bad input (``fail``), one line and exit code 2 as the CLI does.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import NoReturn

from cifar_resnet.records.machine import machine  # one description of the CPU, as runs record it

RESULTS = Path(__file__).resolve().parent / "results"


def fail(script: str, message: str) -> NoReturn:
    """One line on stderr, ``<script>: <message>``, and exit code 2, as the CLI does."""
    print(f"{script}: {message}", file=sys.stderr)
    sys.exit(2)


def slug(text: str) -> str:
    """Lower-case letters and digits, other runs of characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_result(result: dict, what: str, folder: str | Path = RESULTS) -> Path:
    """Write ``result`` (it names its ``date`` and ``device``) as pretty JSON; return the path.

    The machine (``records.machine.machine()``) is added to ``result`` after its device
    unless it names one.
    A file of that name already there is kept: the new one is ``<name>-2.json`` (``-3``...).
    """
    if "machine" not in result:
        items = list(result.items())
        at = list(result).index("device") + 1
        result.clear()
        result.update(items[:at] + [("machine", machine())] + items[at:])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{slug(result['device'])}-{what}"
    path, n = folder / f"{stem}.json", 1
    while path.exists():  # a result already recorded is never overwritten
        n += 1
        path = folder / f"{stem}-{n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
