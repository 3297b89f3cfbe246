"""notebooks/quickstart.ipynb: only imports and calls, no stored outputs, and it runs end to end."""

import json
import re
import sys
from pathlib import Path

import pytest
from helpers import make_synthetic, write_pickles

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra")
pytest.importorskip("ipykernel", reason="ipykernel is in the test extra")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _code_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_valid_and_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_first_code_cell_installs_only_when_the_package_is_missing():
    from IPython.core.inputtransformer2 import TransformerManager

    first = _code_cells(nbformat.read(NOTEBOOK, as_version=4))[0]
    assert re.search(r'^REPO = "https://', first, re.M)
    assert "try:\n    import cifar_resnet\nexcept ImportError:" in first
    assert '%pip install --quiet "git+{REPO}"' in first
    compile(TransformerManager().transform_cell(first), "cell", "exec")  # the magic parses


def test_notebook_holds_no_model_or_training_code():
    code = "\n".join(_code_cells(nbformat.read(NOTEBOOK, as_version=4)))
    for pattern in (
        r"^\s*(def|class|for|while)\b",
        r"\bnn\.",
        r"\bbackward\(",
        r"\boptim\b",
        r"import torch\b",
        r"savefig",
    ):
        assert not re.search(pattern, code, re.M), pattern


def _kernel_for_this_python(folder: Path) -> str:
    """A kernelspec that starts this interpreter (the venv's), found through JUPYTER_PATH."""
    name = "cifar-resnet-test"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": name, "language": "python"})
    )
    return name


def test_notebook_runs_on_a_tiny_configuration(tmp_path, monkeypatch):
    # fewer images than its QUICK limits: an epoch of two steps, a report on 100 test images
    data_dir = write_pickles(tmp_path / "data", make_synthetic(200, 100))
    monkeypatch.setenv("CIFAR10_DIR", str(data_dir))
    monkeypatch.setenv("CIFAR_RESNET_QUICK", "1")
    monkeypatch.setenv("CIFAR_RESNET_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("CIFAR_RESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kernel = _kernel_for_this_python(tmp_path / "jupyter")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "cifar_resnet 0." in text  # the install cell found the package and skipped pip
    assert Path(nb.cells[-1].outputs[0].text.strip()) == Path(sys.executable)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # class distribution, samples, augmented, LR finder
    report = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert report and "Grad-CAM" in report[-1] and "Misclassified test images" in report[-1]
    assert (tmp_path / "run" / "final.json").exists()
    assert (tmp_path / "run" / "lr_finder.json").exists()
