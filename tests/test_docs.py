"""The README and docs/ against what they describe: the generated tables and the figure are
what their scripts write from the committed files and code, every results file named exists,
and every relative link resolves."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from cifar_resnet.config import TrainConfig
from cifar_resnet.records import records

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when a script runs: its folder is on the path

import generated  # noqa: E402
import reference_docs  # noqa: E402
import results_table  # noqa: E402
import screen_table  # noqa: E402

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = BENCHMARKS / "results"


def _prose(text: str) -> str:
    """Markdown without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped,
    spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", _prose(text), flags=re.M):
        slug = _slug(heading)
        seen[slug] = seen.get(slug, -1) + 1  # a repeated heading's anchor gets -1, -2, ...
    return {s if n == 0 else f"{s}-{n}" for s, n in seen.items()} | {
        f"{s}-{i}" for s, n in seen.items() for i in range(1, n + 1)
    }


def broken_links(pages: list[Path]) -> list[str]:
    """Each relative link of ``pages`` whose file, or heading in it, does not exist."""
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_the_readme_says_what_it_is_and_how_to_start_in_its_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:40])
    assert "ResNet-9" in first and "CIFAR-10" in first
    assert re.search(r"^make train$", first, re.M) and re.search(r"^make test$", first, re.M)


def test_the_results_table_is_what_the_headline_files_give():
    paths = [RESULTS / name for name in results_table.HEADLINE]
    assert generated.block(README.read_text(), results_table.BLOCK) == results_table.table(paths)


def test_the_screen_table_is_what_its_files_give():
    steps = [(step, RESULTS / name) for step, name in screen_table.SCREEN]
    doc = (ROOT / "docs" / "results.md").read_text()
    assert generated.block(doc, screen_table.BLOCK) == screen_table.table(steps), "make docs"


def test_the_screen_table_compares_each_step_with_the_one_before(tmp_path):
    def result(name, accs, ttas):
        runs = [
            {"epochs": [{"seconds": 10.0}] * 3, "config": {"recipe": "page", "seed": i},
             "final": {"test_acc": a, "test_acc_tta": t}}
            for i, (a, t) in enumerate(zip(accs, ttas, strict=True))
        ]  # fmt: skip
        (tmp_path / name).write_text(json.dumps({"name": name, "runs": runs}))
        return tmp_path / name

    first = result("a.json", [0.80, 0.81], [0.82, 0.83])
    second = result("b.json", [0.83, 0.82], [0.84, 0.84])
    lines = screen_table.table([("base", first), ("+ trick", second)]).splitlines()
    assert "| 80.50% (spread 1.00) | 82.50% |  |" in lines[2]
    assert "| 82.50% (spread 1.00) | 84.00% | +2.00 (+1.50) |" in lines[3]


def test_the_figure_was_drawn_from_the_headline_files_as_they_are():
    paths = [RESULTS / name for name in results_table.HEADLINE]
    source = Image.open(RESULTS / "accuracy-vs-time.png").text["Source"]
    names = ", ".join(results_table.HEADLINE)
    assert source == f"{names}; sha256 {results_table.digest(paths)}", "run make docs"


def test_the_reference_pages_are_what_the_parsers_and_records_give():
    cli_md, run_folder_md = (
        reference_docs.CLI_MD.read_text(),
        reference_docs.RUN_FOLDER_MD.read_text(),
    )
    assert generated.block(cli_md, "cli") == reference_docs.cli_reference(), "run make docs"
    assert generated.block(run_folder_md, "run-folder") == reference_docs.run_folder_reference()


def test_the_reference_pages_name_every_flag_and_every_key():
    cli = reference_docs.cli_reference()
    train = cli.split("## `cifar-resnet train`", 1)[1].split("\n## ", 1)[0]
    for f in dataclasses.fields(TrainConfig):
        assert f"`--{f.name.replace('_', '-')}" in train, f.name
    for command in ("summary", "lr-find", "evaluate", "predict", "export", "data", "report"):
        assert f"## `cifar-resnet {command}`" in cli
    run_folder = reference_docs.run_folder_reference()
    for cls in (records.RunSummary, records.EpochMetrics, records.LRFinderResult,
                records.TrainState):  # fmt: skip
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in run_folder, f"{cls.__name__}.{f.name}"
    # a key's comment in records.py is its description
    assert (
        "| `seconds` | `float` | training time of the epoch (evaluation excluded) |" in run_folder
    )


def test_every_results_file_the_docs_name_exists():
    named = set()
    for page in PAGES:
        text = page.read_text()
        assert not re.findall(r"\.\.\.-[\w.-]+\.json", text), f"{page.name}: write names in full"
        named |= set(re.findall(r"(?<![\w/*-])(\d{4}-\d{2}-\d{2}-[\w.*-]*?\.json)", text))
        named |= set(re.findall(r"(?<![\w.-])(\*[\w.*-]*?\.json)", text))
    assert len(named) > 30  # the pages name most of them
    assert [n for n in sorted(named) if not list(RESULTS.glob(n))] == []


def test_every_relative_link_resolves():
    assert broken_links(PAGES) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Two words, here\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md) [ok](a.md#two-words-here) [ok](#b) [web](https://example.org/x)\n"
        "[gone](c.md) [no heading](a.md#three)\n\n# B\n\n```\n[in code](d.md)\n```\n"
    )
    assert broken_links([page]) == [
        "b.md: c.md (no such file)",
        "b.md: a.md#three (no such heading)",
    ]


def _run(seed: int, acc: float, machine: dict | None, **settings) -> dict:
    """A run as train_bench records one: its config, final figures and epochs."""
    config = {**TrainConfig(**settings).to_dict(), "seed": seed, "precision": "bf16"}
    epochs = [
        {"epoch": i + 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
         "test_acc": acc, "seconds": s}
        for i, s in enumerate((100.0, 120.0, 300.0))
    ]  # fmt: skip
    final = {"test_acc": acc, "precision": "bf16"}
    if settings.get("recipe") == "page":  # page measures flip TTA as it trains
        final["test_acc_tta"] = acc + 0.01
    run = {"config": config, "final": final, "epochs": epochs, "train_seconds": 520.0}
    return run | ({"machine": machine} if machine else {})


def test_the_table_has_a_row_per_recipe_machine_and_precision(tmp_path):
    amx = {"cpu": "Intel(R) Xeon(R) Processor", "amx_bf16": True, "avx512_bf16": True}
    epyc = {"cpu": "AMD EPYC", "amx_bf16": False, "avx512_bf16": True}
    spec = {"name": "spec", "machine": amx, "runs": [_run(1, 0.90, None), _run(0, 0.904, None)]}
    page = {"name": "page", "machine": amx, "runs": [
        _run(0, 0.91, None, recipe="page", width=0.25, pool_after_relu=True),
        _run(1, 0.92, epyc, recipe="page", width=0.25, pool_after_relu=True),  # another CPU
    ]}  # fmt: skip
    for name, result in (("a.json", spec), ("b.json", page)):
        (tmp_path / name).write_text(json.dumps(result))
    table = results_table.table([tmp_path / "a.json", tmp_path / "b.json"])
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [r[:5] for r in rows] == [
        ["| `spec`", "Xeon with AMX", "bf16", "0, 1", "**90.20%** (spread 0.40)"],
        ["| `page --width 0.25 --pool-after-relu`", "Xeon with AMX", "bf16", "0", "**91.00%**"],
        ["| `page --width 0.25 --pool-after-relu`", "EPYC with AVX512-BF16", "bf16", "1",
         "**92.00%**"],
    ]  # fmt: skip
    assert rows[0][5:8] == ["not recorded", "9 min", "3 x 120 s"]  # the spec measured no TTA
    assert rows[1][5] == "92.00%"
    assert rows[2][8] == "[`b.json`](benchmarks/results/b.json) |"


def test_fill_rewrites_a_block_and_check_finds_it_stale(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        "top\n<!-- begin results-table: note -->\nold\n<!-- end results-table -->\nend\n"
    )
    argv = ["--files", *results_table.HEADLINE, "--readme", str(readme)]
    assert results_table.main([*argv, "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert readme.read_text().count("old") == 1  # --check writes nothing
    assert results_table.main([*argv, "--write"]) == 0
    text = readme.read_text()
    assert text.startswith("top\n<!-- begin results-table: note -->\n| recipe |")
    assert text.endswith("|\n<!-- end results-table -->\nend\n")
    assert results_table.main([*argv, "--check"]) == 0
    with pytest.raises(ValueError, match="begin other"):
        generated.fill(text, "other", "x")
