"""The package's shape, as ARCHITECTURE.md draws it: imports point one way and never
round in a cycle, functions stay short and take few positional arguments, a record has
one form, a run folder's file names and the training step each have one owner, and
``cifar-resnet --version`` stays light."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cifar_resnet"
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6  # parameters before the first keyword-only one (self and cls not counted)
STEP_FUNCTION = "training.fit.train_step"  # the one place a training step calls backward()
# The files of a run folder (records/layout.py spells them; no other module may).
RUN_FOLDER_NAMES = (
    "config.json", "metrics.jsonl", "final.json", "lr_finder.json", "lr_finder.png",
    "report.html", "last.pt",
)  # fmt: skip
OTHER_FOLDERS = {"inference.hub": ("config.json",)}  # an exported folder's own config.json

# What a part of the package must not import (a module, or a package and its modules).
FORBIDDEN = {
    "cifar_resnet.config": "everything of the package but cifar_resnet.errors",
    "cifar_resnet.data": ("model", "records", "training", "inference", "insight", "runs", "plots"),
    "cifar_resnet.model": ("data", "records", "training", "inference", "insight", "runs", "plots"),
    "cifar_resnet.records": ("data", "model", "training", "inference", "insight", "runs", "plots"),
    "cifar_resnet.inference": ("training", "insight", "runs", "plots"),
    "cifar_resnet.training": ("insight", "runs"),
    "cifar_resnet.insight": ("runs",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import x: x is a module, or a name of the package
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
                          for a in node.names}  # fmt: skip
            else:
                found.add(target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar_resnet"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cifar_resnet")}
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def test_imports_point_the_way_the_architecture_says():
    wrong = []
    for module, imports in _graph().items():
        for target in imports - {"cifar_resnet"}:  # the package root only holds __version__
            if _within(target, "cifar_resnet.cli") and module != "cifar_resnet.__main__":
                wrong.append(f"{module} -> {target} (nothing imports the command line)")
            for part, banned in FORBIDDEN.items():
                if not _within(module, part) or _within(target, part):
                    continue
                if isinstance(banned, str):  # config: errors only
                    if target != "cifar_resnet.errors":
                        wrong.append(f"{module} -> {target} ({part} imports {banned})")
                elif any(_within(target, f"cifar_resnet.{b}") for b in banned):
                    wrong.append(f"{module} -> {target} ({part} must not import it)")
    assert wrong == []


def test_no_module_imports_itself_back_through_others():
    graph = _graph()
    cycles, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v] & set(graph):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checks_would_see_a_cycle_and_a_wrong_import(tmp_path, monkeypatch):
    """The two tests above fail on a package that breaks their rules."""
    package = tmp_path / "cifar_resnet"
    (package / "training").mkdir(parents=True)
    (package / "insight").mkdir()
    for path in ("__init__.py", "training/__init__.py", "insight/__init__.py"):
        (package / path).write_text("")
    (package / "training" / "fit.py").write_text("from ..insight.report import x\n")
    (package / "insight" / "report.py").write_text("from ..training.fit import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError):
        test_imports_point_the_way_the_architecture_says()
    with pytest.raises(AssertionError):
        test_no_module_imports_itself_back_through_others()


def _listed_exceptions() -> set[str]:
    """The long functions ARCHITECTURE.md lists (``module.function``, in its table)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split("## Longer functions", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([\w.]+)` \|", section, flags=re.M))


def test_functions_are_short_but_the_templates_architecture_lists():
    long = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if function and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.add(f"{name.removeprefix('cifar_resnet.')}.{node.name}")
    assert long == _listed_exceptions()


def test_the_version_and_the_package_import_neither_matplotlib_nor_captum():
    probe = (
        "import sys\n"
        "import cifar_resnet\n"
        "from cifar_resnet.cli import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('matplotlib', 'captum', 'torchinfo', 'onnx', 'tensorboard')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["cifar-resnet 0.1.0", "[]"]
    # and the public names still load, each from its own stage
    names = subprocess.run(
        [sys.executable, "-c", "import cifar_resnet as c; print(all(getattr(c, n) for n in "
         "c.__all__), 'matplotlib' in __import__('sys').modules)"],  # fmt: skip
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert names.stdout.split() == ["True", "True"]


def _functions():
    """(module, function node) of every function of the package, nested ones included."""
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name.removeprefix("cifar_resnet."), node


def _table(heading: str) -> set[str]:
    """The names a table of ARCHITECTURE.md lists under ``heading`` (its first column)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([\w.]+)` \|", section, flags=re.M))


def test_no_function_takes_more_than_six_positional_arguments():
    crowded = set()
    for module, node in _functions():
        names = [a.arg for a in node.args.posonlyargs + node.args.args]
        if len([n for n in names if n not in ("self", "cls")]) > MAX_POSITIONAL:
            crowded.add(f"{module}.{node.name}")
    assert crowded == set()


def test_a_checkpoint_has_one_form_no_signature_takes_a_state_or_a_dict():
    either = re.compile(r"TrainState\s*\|\s*dict|dict\[str, Any\]\s*\|\s*TrainState")
    found = [name for name, path in _modules().items() if either.search(path.read_text())]
    assert found == []


def _string_constants(tree: ast.AST) -> list[str]:
    """The string constants of a module that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_a_run_folders_file_names_are_spelled_in_one_module():
    spelled: dict[str, set[str]] = {}
    for name, path in _modules().items():
        for text in _string_constants(ast.parse(path.read_text())):
            for file in RUN_FOLDER_NAMES:
                if file in OTHER_FOLDERS.get(name.removeprefix("cifar_resnet."), ()):
                    continue
                if re.search(rf"(?<![\w.-]){re.escape(file)}(?![\w-])", text):
                    spelled.setdefault(file, set()).add(name)
    assert {file: sorted(m) for file, m in spelled.items() if len(m) > 1} == {}


def test_backward_is_called_in_the_step_function_alone_but_where_architecture_lists():
    calls = set()
    for module, node in _functions():
        inner = {id(n) for child in node.body for f in ast.walk(child)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}  # fmt: skip
        for n in ast.walk(node):
            is_call = isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            if is_call and n.func.attr == "backward" and id(n) not in inner:
                calls.add(f"{module}.{node.name}")
    assert STEP_FUNCTION in calls
    assert calls - {STEP_FUNCTION} == _table("backward() outside the step")


def test_the_new_checks_fail_on_a_package_that_breaks_them(tmp_path, monkeypatch):
    """Each of the four checks above fails on a package made to break it."""
    package = tmp_path / "cifar_resnet"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "training" / "__init__.py").write_text("")
    (package / "training" / "fit.py").write_text(
        "def train_step(loss):\n    loss.backward()\n\n\n"
        "def sweep(a, b, c, d, e, f, g):\n    g.backward()\n"
    )
    (package / "runs.py").write_text(
        "from typing import Any\n\n\n"
        "def load(state: 'TrainState | dict[str, Any]'):\n    return 'final.json'\n"
    )
    (package / "cli.py").write_text("NAME = 'run/final.json'\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    for check in (
        test_no_function_takes_more_than_six_positional_arguments,
        test_a_checkpoint_has_one_form_no_signature_takes_a_state_or_a_dict,
        test_a_run_folders_file_names_are_spelled_in_one_module,
        test_backward_is_called_in_the_step_function_alone_but_where_architecture_lists,
    ):
        with pytest.raises(AssertionError):
            check()
