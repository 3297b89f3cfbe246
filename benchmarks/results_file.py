"""Where the benchmark scripts record their figures: results/<date>-<device>-<what>.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def slug(text: str) -> str:
    """Lower-case letters and digits, other runs of characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_result(result: dict, what: str, folder: str | Path = RESULTS) -> Path:
    """Write ``result`` (it names its ``date`` and ``device``) as pretty JSON; return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result['date']}-{slug(result['device'])}-{what}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
