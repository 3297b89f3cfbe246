"""Export a trained model to ONNX or TorchScript for use without this package.

Both formats hold the same network, ``NormalizedClassifier``:

- input ``images``: float32 (N, 3, 32, 32), RGB, values in [0, 1] (uint8 pixels / 255), with a
  dynamic batch axis N. The training split's normalisation ``(images - mean) / std`` is baked
  in as the first operation, so callers never need the mean and std;
- output ``logits``: float32 (N, C); ``softmax`` over the last axis gives probabilities.

Float input in [0, 1] rather than uint8 is the convention most image pipelines already produce
(e.g. torchvision's ``ToTensor``). Images of another size must be brought to 32x32 first, as
``inference.predict.load_image`` does.

Metadata stored with the file (``read_metadata`` reads it back from either format), every value
a string: ``classes``, ``mean``, ``std`` (JSON lists), ``normalization``, ``input``, ``output``,
``epoch``, ``config`` (JSON, without local paths) and ``cifar_resnet_version``. ONNX keeps them
in the model's ``metadata_props`` (onnxruntime: ``session.get_modelmeta().custom_metadata_map``);
TorchScript in the extra file ``metadata.json``
(``torch.jit.load(path, _extra_files={"metadata.json": ""})``) and the class names also as the
module attribute ``classes``.

ONNX goes through ``torch.onnx.export(..., dynamo=True)``, the exporter PyTorch develops and
defaults to since 2.9; it needs the ``onnxscript`` package. The older TorchScript-based ONNX
exporter (``dynamo=False``) still runs in torch 2.14 but warns that it will be removed, so it
is not used. TorchScript is written with ``torch.jit.script``; PyTorch marks TorchScript as
deprecated (its FutureWarnings are silenced here) but still saves and loads it, and C++
(libtorch) deployments rely on it. The ONNX packages live in the ``export`` extra:
``pip install 'cifar-resnet[export]'``.

Every export is checked before it is kept: the written file is run (onnxruntime on the CPU, or
``torch.jit.load``) on a fixed batch of random images and compared with PyTorch; the file is
written under a temporary name and moved into place only then.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CifarResnetError, oneline
from ..files import staged
from ..model.layers import plain_batchnorms
from .types import SIDE, TrainedModel

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4  # largest |logit| difference from PyTorch accepted in the post-export check

_INSTALL_HINT = "install them with: pip install 'cifar-resnet[export]'"


class NormalizedClassifier(nn.Module):
    """Float images (N, 3, 32, 32) in [0, 1] -> logits (N, C), normalising first."""

    def __init__(
        self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor, classes: list[str]
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().float().cpu().view(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().float().cpu().view(1, 3, 1, 1).clone())
        self.classes = list(classes)  # TorchScript keeps it as a List[str] attribute

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) of float images (N, 3, 32, 32) in [0, 1]."""
        return self.model((images - self.mean) / self.std)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote and how closely the file matches PyTorch."""

    path: Path
    format: str
    size_bytes: int
    max_abs_diff: float  # largest |logit| difference from PyTorch on the check batch
    metadata: dict[str, str]


def export_model(
    model: TrainedModel,
    out: str | Path,
    format: str = "onnx",
    *,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``model`` as an ONNX or TorchScript file at ``out``, checked against PyTorch."""
    if format not in FORMATS:
        raise CifarResnetError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    if out.is_dir():
        raise CifarResnetError(f"--out {out} is a folder; give a file name such as model.{format}")
    if out.exists() and not overwrite:
        raise CifarResnetError(f"--out {out} already exists; choose another name or pass --force")
    if format == "onnx":
        _require_onnx()
    wrapper = deployable(model)
    metadata = export_metadata(model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with staged(out, unique=True) as tmp:
            write = _write_onnx if format == "onnx" else _write_torchscript
            write(wrapper, tmp, metadata)
            diff = _check(wrapper, tmp, format)
            if not diff <= TOLERANCE:
                raise RuntimeError(
                    f"the exported {format} model differs from PyTorch by {diff:.2e} in the logits"
                )
    except OSError as e:
        raise CifarResnetError(
            f"cannot write to {out.parent} ({e.strerror or e}); choose a writable folder"
        ) from None
    return ExportResult(out, format, out.stat().st_size, diff, metadata)


def deployable(model: TrainedModel) -> NormalizedClassifier:
    """A CPU copy of the network with its normalisation in front, in eval mode (ghost
    BatchNorms as the plain BatchNorms they are in evaluation)."""
    net = copy.deepcopy(model.model).cpu().to(memory_format=torch.contiguous_format)
    net = plain_batchnorms(net)
    return NormalizedClassifier(net, model.mean, model.std, list(model.classes)).eval()


def export_metadata(model: TrainedModel) -> dict[str, str]:
    """The string metadata stored with an exported file (see the module doc)."""
    from .. import __version__

    return {
        "classes": json.dumps(list(model.classes)),
        "mean": json.dumps([round(v, 8) for v in model.mean.tolist()]),
        "std": json.dumps([round(v, 8) for v in model.std.tolist()]),
        "normalization": "applied inside the model: (images - mean) / std, per channel",
        "input": (
            f"{INPUT_NAME}: float32 (N, 3, {SIDE}, {SIDE}) RGB in [0, 1] (uint8 pixels / 255), "
            "N dynamic"
        ),
        "output": f"{OUTPUT_NAME}: float32 (N, {len(model.classes)}); softmax gives probabilities",
        "epoch": str(model.epoch),
        # Local paths stay out of a file meant to be shipped.
        "config": json.dumps(model.shareable_config()),
        "cifar_resnet_version": __version__,
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported ONNX or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise CifarResnetError(f"{path} does not exist; pass an exported .onnx or TorchScript file")
    if _is_zip(path):
        extra = {"metadata.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            return json.loads(extra["metadata.json"])
        except (RuntimeError, ValueError) as e:
            raise CifarResnetError(
                f"{path} is not a TorchScript file exported by cifar-resnet ({oneline(e, 160)})"
            ) from None
    _require_onnx()
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf reports a non-ONNX file in several ways
        raise CifarResnetError(
            f"{path} is not an ONNX or TorchScript file ({oneline(e, 160)})"
        ) from None
    return {p.key: p.value for p in proto.metadata_props}


# The torch.export-based ONNX exporter, with the arguments used here, arrived in torch 2.6.
ONNX_MIN_TORCH = (2, 6)


def _require_onnx() -> None:
    release = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if release < ONNX_MIN_TORCH:
        raise CifarResnetError(
            f"ONNX export needs torch >= {'.'.join(map(str, ONNX_MIN_TORCH))} "
            f"(this is {torch.__version__}); upgrade torch or use --format torchscript"
        )
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CifarResnetError(f"ONNX export needs {', '.join(missing)}; {_INSTALL_HINT}")


def _example(n: int) -> torch.Tensor:
    """A fixed batch of random images (n, 3, 32, 32) in [0, 1]."""
    return torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


def _write_onnx(wrapper: NormalizedClassifier, path: Path, metadata: dict[str, str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter internals warn about their own deprecations
        program = torch.onnx.export(
            wrapper,
            (_example(2),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)


def _write_torchscript(wrapper: NormalizedClassifier, path: Path, metadata: dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        scripted = torch.jit.script(wrapper)
        torch.jit.save(scripted, str(path), _extra_files={"metadata.json": json.dumps(metadata)})


@torch.inference_mode()
def _check(wrapper: NormalizedClassifier, path: Path, format: str) -> float:
    """Largest |logit| difference between the file and PyTorch on 7 fixed random images."""
    x = _example(7)  # a batch size other than the export's example, to exercise the dynamic axis
    expected = wrapper(x)
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            loaded = torch.jit.load(str(path), map_location="cpu")
        got = loaded(x)
    if got.shape != expected.shape:
        return float("inf")
    return (got - expected).abs().max().item()


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
