"""Blocks of Markdown that a script writes between two marker comments.

A block named NAME sits between ``<!-- begin NAME ... -->`` and ``<!-- end NAME -->``,
each on a line of its own; the text around it is written by hand. ``fill`` replaces a
block's lines, so a script rewrites its own figures and nothing else, and a test that
fills a file anew and finds it changed knows the committed figures are stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _span(text: str, name: str) -> tuple[int, int]:
    """Where the body of block ``name`` starts and ends in ``text`` (after the begin line,
    at the end line); ValueError unless it holds the pair of markers once."""
    begins = [m.end() for m in re.finditer(rf"^<!-- begin {re.escape(name)}\b.*-->\n", text, re.M)]
    ends = [m.start() for m in re.finditer(rf"^<!-- end {re.escape(name)} -->$", text, re.M)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"expected one '<!-- begin {name} -->' ... '<!-- end {name} -->' pair")
    return begins[0], ends[0]


def block(text: str, name: str) -> str:
    """The body of block ``name`` in ``text``."""
    start, end = _span(text, name)
    return text[start:end]


def fill(text: str, name: str, body: str) -> str:
    """``text`` with the body of block ``name`` replaced by ``body`` (ending in a newline)."""
    start, end = _span(text, name)
    return text[:start] + body.rstrip("\n") + "\n" + text[end:]


def update(path: Path, blocks: dict[str, str], *, write: bool) -> bool:
    """Fill ``blocks`` (name -> body) into the file at ``path``; write it when ``write``.

    Returns whether the file already held them, each exactly.
    """
    text = path.read_text()
    new = text
    for name, body in blocks.items():
        new = fill(new, name, body)
    if write and new != text:
        path.write_text(new)
    return new == text


def report(current: dict[Path, bool], *, write: bool, script: str) -> int:
    """Say which files (path -> whether ``update`` found it current) were written or are
    stale; the exit code: 1 if one is stale and was not written."""
    for path, same in current.items():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if not same:
            print(f"{script}: {'wrote' if write else 'stale:'} {where}", file=sys.stderr)
    return 0 if write or all(current.values()) else 1
