"""Weights to share: a folder in the Hugging Face model layout, loadable without pickle.

``export --format safetensors --out FOLDER`` writes

- ``model.safetensors``: the network's ``state_dict`` (float32, the EMA's weights for a
  run with an EMA), read with ``safetensors.torch.load_file`` and no pickle;
- ``config.json``: what rebuilds and feeds the network: ``architecture`` and its
  ``model_options`` (width, norm, dropout, head bias, logit scale, pooling order; a
  folder written before the pooling option loads in the spec's order), ``classes`` (and
  ``id2label``), the training split's ``mean`` and ``std``, the ``input`` convention, the
  ``precision`` it was evaluated in, the test accuracy, and the training config without
  local paths;
- ``README.md``: a model card: data, recipe, test accuracy overall and per class
  (measured on the test split at export, in the run's precision), intended use and limits;
- ``app.py``: the demo page of the folder's model (``cifar-resnet demo``'s, without test
  images), so the folder can run as a Gradio Space; it needs ``cifar-resnet[demo]``.

``load_model(FOLDER)`` (and ``predict``/``evaluate --checkpoint FOLDER``) read it back. The
folder is written under a temporary name next to ``FOLDER`` and renamed into place once
its weights have been reloaded and their logits checked against the exported model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import files
from ..config import MODEL_OPTIONS, TrainConfig, as_saved_run
from ..errors import CheckpointError, CifarResnetError, ConfigError, oneline
from ..model.custom_resnet import CustomResNet, load_weights
from ..records.layout import CHECKPOINTS, CONFIG_JSON
from ..runtime import resolve_runtime, runnable_precision
from .types import SIDE, Evaluation, TrainedModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
APP = "app.py"
MODEL_TYPE = "cifar-resnet/custom-resnet9"
TOLERANCE = 1e-6  # largest |logit| difference (fp32) accepted between reloaded and exported


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder this module wrote (or one laid out like it)."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def _weights(model: TrainedModel) -> dict[str, torch.Tensor]:
    return {
        k: v.detach()
        .to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
        .contiguous()
        .clone()
        for k, v in model.model.state_dict().items()
    }


def folder_config(model: TrainedModel, evaluation: Evaluation) -> dict[str, Any]:
    """config.json of the exported folder."""
    from .. import __version__

    training = model.shareable_config()
    return {
        "model_type": MODEL_TYPE,
        "architecture": "CustomResNet",
        "model_options": {k: training[k] for k in MODEL_OPTIONS},
        "num_classes": len(model.classes),
        "classes": list(model.classes),
        "id2label": {str(i): c for i, c in enumerate(model.classes)},
        "mean": model.mean.tolist(),
        "std": model.std.tolist(),
        "input": {
            "shape": [3, SIDE, SIDE],
            "layout": "NCHW, RGB",
            "range": "uint8 pixels / 255, in [0, 1]",
            "normalization": "(x - mean) / std per channel, before the network (not inside it)",
        },
        "output": "logits (N, num_classes); softmax gives probabilities",
        "precision": model.runtime.precision,
        "epoch": model.epoch,
        "test_acc": evaluation.acc,
        "test_images": evaluation.n,
        "recorded_test_acc": model.recorded_test_acc,
        "training_config": training,
        "cifar_resnet_version": __version__,
    }


def model_card(model: TrainedModel, evaluation: Evaluation, data_source: str) -> str:
    """README.md of the exported folder: what the model is, how well it does, what not to
    use it for."""
    c = model.config
    cut = c.cutout_size
    rows = "\n".join(
        f"| {name} | {acc:.2%} |" if acc is not None else f"| {name} | (no images) |"
        for name, acc in zip(model.classes, evaluation.per_class_acc, strict=True)
    )
    lr = f"{c.min_lr:.3g} -> {c.max_lr:.3g}" if c.max_lr is not None else "found by the range test"
    recorded = (
        f" Training recorded {model.recorded_test_acc:.2%} after its last epoch."
        if model.recorded_test_acc is not None
        else ""
    )
    return f"""---
library_name: pytorch
pipeline_tag: image-classification
tags:
- image-classification
- cifar10
- resnet
datasets:
- cifar10
metrics:
- accuracy
---

# CustomResNet (ResNet-9, width {c.width:g}) trained on CIFAR-10

David Page's ResNet-9 as this package builds it (`cifar_resnet.CustomResNet`), trained with
the `{c.recipe}` recipe of `cifar-resnet` {folder_version()}.

## Test accuracy

**{evaluation.acc:.2%}** on {evaluation.n:,} images of the CIFAR-10 test split, measured when
this folder was written ({model.runtime.precision}, no test-time augmentation).{recorded}

| class | accuracy |
|---|---|
{rows}

## Data

CIFAR-10 ({data_source}): 50,000 training and 10,000 test images, 32x32 RGB, 10 classes.
Training used the training split only; the test split was never trained on or used to
choose settings of this run.

## Recipe

{c.epochs} epochs, batch {c.batch_size}, {c.optimizer} (weight decay {c.weight_decay:g}),
One Cycle LR {lr} peaking at epoch {c.peak_epoch}, label smoothing {c.label_smoothing:g},
EMA of weights {c.ema_decay:g}, {c.precision} precision; augmentation: random crop after
{c.crop_padding}-pixel padding ({c.crop_pad_mode}), horizontal flip ({c.flip_prob:g}),
CutOut {cut}x{cut}.
Seed {c.seed}. The full training config is in `config.json` (`training_config`).

## Use

Input: float32 (N, 3, 32, 32), RGB, uint8 pixels / 255, then `(x - mean) / std` per channel
with `mean` and `std` from `config.json`. Output: logits over the classes in `config.json`.

```python
from cifar_resnet import load_model, predict
model = load_model("this-folder")
print(predict(model, ["cat.png"]).top_k(3))
```

Without the package, `safetensors.torch.load_file("model.safetensors")` gives the weights
(no pickle); the network is `CustomResNet` with `model_options` from `config.json`.

## Demo

`python app.py` serves a page where an image dropped in is classified (top 5 classes, with
or without flip TTA) and the Grad-CAM map of the top class is drawn over it; it needs
`pip install 'cifar-resnet[demo]'`. As a Gradio Space, this folder needs `sdk: gradio` in
the header above and a `requirements.txt` that installs `cifar-resnet[demo]`.

## Intended use and limits

For learning, teaching and benchmarking: classifying small natural images into the ten
CIFAR-10 classes. Not for decisions about people or safety. It knows only these ten
classes and answers one of them for any input; images unlike CIFAR-10 (other sizes
brought to 32x32, other subjects, drawings, noise) get confident but meaningless answers.
Accuracy differs by class (table above) and drops under distribution shift (e.g.
CIFAR-10.1 or corrupted images), which was not measured here.
"""


APP_SOURCE = '''"""The demo page of this model: drop an image, see the top-5 classes and Grad-CAM.

Run `python app.py` and open the URL it prints; a Gradio Space runs it as it is. It needs
the package with its demo extra: pip install 'cifar-resnet[demo]'.
"""

from pathlib import Path

from cifar_resnet.inference.predict import load_model
from cifar_resnet.insight.demo_app import build_page, serve

demo = build_page(load_model(Path(__file__).resolve().parent), name="this model")

if __name__ == "__main__":
    serve(demo, block=True)
'''


def folder_version() -> str:
    from .. import __version__

    return __version__


def export_folder(
    model: TrainedModel,
    out: str | Path,
    evaluation: Evaluation,
    data_source: str,
    *,
    overwrite: bool = False,
) -> float:
    """Write ``model`` as a safetensors folder at ``out``; the max |logit| difference of
    the reloaded weights from the exported model's."""
    from safetensors.torch import load_file, save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CifarResnetError(f"--out {out} is a file; safetensors export writes a folder")
    if (out / CHECKPOINTS).exists() or (out / CONFIG_JSON).exists() and not is_model_folder(out):
        raise CifarResnetError(
            f"--out {out} holds something else (a run folder?); choose a new folder"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CifarResnetError(f"--out {out} already exists; choose another folder or pass --force")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise CifarResnetError(
            f"cannot write to {out.parent} ({e.strerror or e}); choose a writable folder"
        ) from None
    try:
        weights = _weights(model)
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        config = folder_config(model, evaluation)
        blob, card = files.json_bytes(config), model_card(model, evaluation, data_source).encode()
        files.atomic_write(tmp / CONFIG, lambda f: f.write(blob))
        files.atomic_write(tmp / CARD, lambda f: f.write(card))
        files.atomic_write(tmp / APP, lambda f: f.write(APP_SOURCE.encode()))
        diff = _check(model, load_file(str(tmp / WEIGHTS)), config)
        if not diff <= TOLERANCE:
            raise CifarResnetError(f"the reloaded weights differ in the logits by {diff:.2e}")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:
        raise CifarResnetError(f"cannot write {out}: {oneline(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return diff


def _network(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> CustomResNet:
    model = CustomResNet(int(config["num_classes"]), **config["model_options"])
    return load_weights(model, weights, f"{WEIGHTS} does not fit {CONFIG}")


def _check(model: TrainedModel, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> float:
    """Max |logit| difference (fp32, CPU) between the exported network and the reloaded one."""
    x = torch.randn(8, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    original = CustomResNet(int(config["num_classes"]), **config["model_options"]).eval()
    original.load_state_dict(_weights(model))
    with torch.no_grad():
        return float((original(x) - _network(config, weights)(x)).abs().max())


def load_folder(path: str | Path, device: str = "cpu") -> TrainedModel:
    """The model of a folder ``export_folder`` wrote."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text())
        weights = load_file(str(path / WEIGHTS))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"cannot read the model folder {path}: {oneline(e)}") from None
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"{path / CONFIG} is not a cifar-resnet model (model_type "
            f"{config.get('model_type')!r}, expected {MODEL_TYPE!r})"
        )
    try:
        training = TrainConfig.from_dict(as_saved_run(config["training_config"]))
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid training_config: {oneline(e)}") from None
    precision = config.get("precision", training.precision)
    runtime = resolve_runtime(device, runnable_precision(precision, device))
    model = runtime.place(_network(config, weights))
    return TrainedModel(
        model=model,
        classes=tuple(config["classes"]),
        mean=torch.tensor(config["mean"], dtype=torch.float32),
        std=torch.tensor(config["std"], dtype=torch.float32),
        config=training,
        runtime=runtime,
        epoch=int(config.get("epoch", 0)),
        recorded_test_acc=config.get("test_acc"),
        path=path,
    )
