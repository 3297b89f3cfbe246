"""The reference pages: every flag of every command (docs/cli.md) and every file and key
of a run folder (docs/run-folder.md), written from the code that defines them.

    python benchmarks/reference_docs.py            # print both
    python benchmarks/reference_docs.py --write    # fill them into docs/ between their markers
    python benchmarks/reference_docs.py --check    # exit 1 if the committed pages are stale

The flags come from ``cli.build_parser()`` (the help ``--help`` prints, so a config flag
says its range and default as ``TrainConfig``'s metadata gives them) and the recipes'
values from ``config.RECIPES``; the files from ``records/layout.py`` and their keys from
the record classes of ``records/records.py``, each key with the comment beside its field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
from pathlib import Path
from typing import Any

from generated import ROOT, report, update

from cifar_resnet.cli import build_parser
from cifar_resnet.config import RECIPES, TrainConfig
from cifar_resnet.errors import PROG
from cifar_resnet.records import layout, records

DOCS = ROOT / "docs"
CLI_MD, RUN_FOLDER_MD = DOCS / "cli.md", DOCS / "run-folder.md"


def _cell(text: Any) -> str:
    """Text fit for a Markdown table cell: ``|`` escaped, and outside code spans the
    characters Markdown would read as markup (``<class>`` as a tag, ``*`` and ``~`` as
    emphasis); docstrings' double backticks become code spans."""
    parts = str(text).replace("``", "`").replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        for char, escaped in (("*", "\\*"), ("~", "\\~"), ("<", "&lt;")):
            parts[i] = parts[i].replace(char, escaped)
    return "`".join(parts).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows])


# The command line


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's subcommands (argparse keeps them in a private action)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def _value(action: argparse.Action) -> str:
    """What follows the flag, as ``--help`` shows it: ``FILE``, ``{a,b}``, ``[FORMAT]``."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        shown = action.metavar
    elif action.choices is not None:
        shown = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        shown = action.dest.upper()
    return {"?": f"[{shown}]", "+": f"{shown} [{shown} ...]", "*": f"[{shown} ...]"}.get(
        action.nargs, shown
    )


def _help(action: argparse.Action, prog: str) -> str:
    """The action's help with argparse's ``%(...)s`` filled in, and its default when the
    help does not say it (as ``ArgumentDefaultsHelpFormatter`` would)."""
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
    if shown and "default" not in text:
        text += f" (default: {action.default})"
    return text


def _arguments(parser: argparse.ArgumentParser) -> str:
    """A command's arguments, a table per argument group (``train``: one per stage)."""
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        rows = [[_code(", ".join(a.option_strings) or a.dest), _code(_value(a)),
                 _help(a, parser.prog)] for a in actions]  # fmt: skip
        out.append(f"**{group.title}**\n\n" + _table(["argument", "value", "what"], rows))
    return "\n\n".join(out)


def _shown(value: Any) -> str:
    """A recipe's value as the table shows it."""
    if value is None:
        return "range test"  # no value of the recipe's: the LR range test chooses it
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _recipes() -> str:
    """Each recipe's values, one row per setting a recipe sets."""
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    keys = sorted({k for values in RECIPES.values() for k in values}, key=fields.index)
    rows = [[_code(f"--{k.replace('_', '-')}"), *(_shown(v.get(k)) for v in RECIPES.values())]
            for k in keys]  # fmt: skip
    return _table(["setting", *(_code(r) for r in RECIPES)], rows)


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md's generated part: the commands, the recipes' values, every argument."""
    parser = parser or build_parser()
    commands = _commands(parser)
    helps = {c.dest: c.help for c in commands._choices_actions}
    parts = [
        _table(
            ["command", "what"],
            [[f"[`{PROG} {n}`](#{PROG}-{n})", helps.get(n, "")] for n in commands.choices],
        ),  # fmt: skip
        f"`{PROG} --version` prints the version.",
        f"## Recipes\n\nWhat `--recipe` sets (`{TrainConfig.recipe}` unless it is given); any "
        "flag typed still overrides it (`--recipe page --epochs 10`).\n\n" + _recipes(),
    ]
    for name, command in commands.choices.items():
        parts.append(f"## `{PROG} {name}`\n\n{_cell(helps.get(name, ''))}.\n\n"
                     + _arguments(command))  # fmt: skip
    return "\n\n".join(parts) + "\n"


# The run folder


def _comments(path: Path) -> dict[int, tuple[str, bool]]:
    """The comments of a source file by line number, each with whether it has the line
    to itself."""
    lines = path.read_text().splitlines(keepends=True)
    tokens = tokenize.generate_tokens(io.StringIO("".join(lines)).readline)
    return {
        t.start[0]: (t.string.lstrip("#").strip(), not lines[t.start[0] - 1][: t.start[1]].strip())
        for t in tokens
        if t.type == tokenize.COMMENT
    }


def _comment(comments: dict[int, tuple[str, bool]], node: ast.stmt) -> str:
    """The comment beside a statement (on any of its lines), else the comment lines just
    above it."""
    lines = range(node.lineno, node.end_lineno + 1)
    beside = [comments[n][0] for n in lines if n in comments and not comments[n][1]]
    if beside:
        return " ".join(beside)
    above, line = [], node.lineno - 1
    while line in comments and comments[line][1]:
        above.insert(0, comments[line][0])
        line -= 1
    return " ".join(above)


def _fields(cls: type, *, skip: tuple[str, ...] = ()) -> str:
    """A record's keys: name, type and the comment beside its field."""
    path = Path(records.__file__)
    tree, comments = ast.parse(path.read_text()), _comments(path)
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    notes = {s.target.id: _comment(comments, s) for s in node.body
             if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}  # fmt: skip
    rows = [[_code(f.name), _code(str(f.type)), notes.get(f.name, "")]
            for f in dataclasses.fields(cls) if f.name not in skip]  # fmt: skip
    return _table(["key", "type", "what"], rows)


# A run folder's files: the record that holds each one's keys, what it is and when written.
_FILES = {
    layout.CONFIG_JSON: ("RunSettings", "the resolved settings; when the run starts, before "
                         "any training"),
    layout.METRICS: ("EpochMetrics", "a line at the end of every epoch"),
    layout.CHECKPOINT: ("TrainState", "what resuming, `evaluate`, `predict`, `export` and the "
                        "report read; after every epoch and on Ctrl-C or SIGTERM, atomically"),
    layout.FINAL: ("RunSummary", "the run's figures; when the last epoch ends"),
    layout.LR_FINDER_JSON: ("LRFinderResult", "the range test's curve and choice, when it ran "
                            "(no `--max-lr`)"),
    layout.LR_FINDER_PNG: ("", "the same, drawn"),
    layout.REPORT: ("", "the run in one page, after training unless `--no-report`; "
                    f"`{PROG} report RUN` rebuilds it"),
    layout.TB_DIR + "/": ("", "TensorBoard's event files, with `--tensorboard` (below)"),
    layout.LOCK_FILE: ("", "the OS lock (`flock`) of the process writing the folder"),
}  # fmt: skip


def run_folder_reference() -> str:
    """docs/run-folder.md's generated part: the files, then each record's keys."""
    named = {*layout.RUN_FILES, layout.TB_DIR + "/", layout.LOCK_FILE}
    if named - set(_FILES):  # a file added to layout.py is described here before it is shown
        raise KeyError(f"reference_docs._FILES does not describe {sorted(named - set(_FILES))}")
    rows = []
    for file, (record, when) in _FILES.items():
        anchor = f"[`{record}`](#{file.replace('/', '').replace('.', '')})" if record else ""
        rows.append([f"`{file}`", anchor, when])
    targets = ", ".join(f"{t:g}" for t in records.ACCURACY_TARGETS)
    sections = [
        (layout.CONFIG_JSON, records.RunSettings, "Every `TrainConfig` field (the flags of "
         "[`train`](cli.md#cifar-resnet-train), named as the fields), then:", ("config",)),
        (layout.METRICS, records.EpochMetrics, "One JSON object a line:", ()),
        (layout.FINAL, records.RunSummary, "These figures, then every setting of "
         f"`{layout.CONFIG_JSON}` that they do not name. The targets of `time_to_accuracy` "
         f"are {targets}.", ()),
        (layout.LR_FINDER_JSON, records.LRFinderResult, "", ()),
        (layout.CHECKPOINT, records.TrainState, "A dict for `torch.save`: `format` "
         f"(`{records.CHECKPOINT_FORMAT}`), then:", ()),
    ]  # fmt: skip
    parts = [_table(["file", "keys", "what, and when it is written"], rows)]
    for file, cls, lead, skip in sections:
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        intro = _cell(f"`{cls.__name__}`: {doc}") + (f"\n\n{lead}" if lead else "")
        parts.append(f"## {file}\n\n{intro}\n\n{_fields(cls, skip=skip)}")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="fill the pages in docs/")
    action.add_argument("--check", action="store_true", help="exit 1 if a page is stale")
    args = parser.parse_args(argv)

    pages = {
        CLI_MD: {"cli": cli_reference()},
        RUN_FOLDER_MD: {"run-folder": run_folder_reference()},
    }
    if not (args.write or args.check):
        for blocks in pages.values():
            print("".join(blocks.values()))
        return 0
    current = {path: update(path, blocks, write=args.write) for path, blocks in pages.items()}
    return report(current, write=args.write, script="reference_docs")


if __name__ == "__main__":
    sys.exit(main())
