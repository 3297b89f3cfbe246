"""The demo page, in Gradio: drop an image or click a test image, and see the 32x32 view the
network takes, its top-5 classes and the Grad-CAM map of the top class, with a flip-TTA
switch and the block to explain. ``cifar-resnet demo`` serves it, and so does the
``app.py`` of a folder written by ``export --format safetensors``.

Gradio is an optional extra (``pip install 'cifar-resnet[demo]'``), imported only when a page
is built. A file the page cannot use (empty, not an image, too large) gets a message in
place of the result, and the server goes on; one model serves one request at a time.

This module has no ``from __future__ import annotations``: Gradio reads the handlers'
annotations (``gradio.SelectData``) as objects.
"""

import errno
import re
import socket
import warnings
from typing import Any

from ..errors import PROG, CifarResnetError, ConfigError, oneline
from ..inference.types import TrainedModel
from ..plots import enlarge, overlay
from .demo import TOP_K, Strip, describe, explain, read_upload, thumbnail
from .gradcam import DEFAULT_LAYER, GRADCAM_LAYERS

INSTALL_HINT = "pip install 'cifar-resnet[demo]'"
VIEW_SCALE = 8  # the 32x32 view and its map are shown at 256x256, a pixel as a square
THUMB_SCALE = 2  # the strip's images at 64x64
MAX_FILE_SIZE = "100mb"  # Gradio refuses larger uploads before they reach the model
LAYER_SIZES = {"layer1": "16x16", "layer2": "8x8", "layer3": "4x4"}  # at a 32x32 input
HINT = "Drop an image, or click a test image below."
_CONCURRENCY = "model"  # every event that runs the network queues here, one at a time


def require_gradio() -> Any:
    """The ``gradio`` module, or a one-line error naming the extra to install."""
    try:
        import gradio
    except ImportError:
        raise ConfigError(f"{PROG} demo needs Gradio; install it with: {INSTALL_HINT}") from None
    return gradio


def build_page(model: TrainedModel, strip: Strip | None = None, *, name: str = "") -> Any:
    """The page of ``model`` as a ``gradio.Blocks``, not yet served; ``strip``: test images
    to click on; ``name``: what the heading calls the model."""
    gr = require_gradio()
    show, from_file, from_strip = _handlers(gr, model, strip)
    layers = [(f"{layer} ({LAYER_SIZES.get(layer, '')})", layer) for layer in GRADCAM_LAYERS]
    with gr.Blocks(title=f"{PROG} demo", analytics_enabled=False) as page:
        gr.Markdown(_heading(model, name))
        current = gr.State(None)  # ("file", path), ("test", position in the strip) or None
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image file (any size and mode)", type="filepath",
                                 elem_id="upload")  # fmt: skip
                tta = gr.Checkbox(label="flip TTA", info="average the softmax of the image and "
                                  "of its mirror image")  # fmt: skip
                layer = gr.Radio(layers, value=DEFAULT_LAYER, label="Grad-CAM layer",
                                 info="the block whose output the map explains")  # fmt: skip
            with gr.Column(scale=2):
                verdict = gr.Markdown(HINT, label="verdict", elem_id="verdict")
                with gr.Row():
                    view = gr.Image(label="what the network sees (32x32)", format="png",
                                    interactive=False, elem_id="view")  # fmt: skip
                    cam = gr.Image(label="Grad-CAM of the top class", format="png",
                                   interactive=False, elem_id="cam")  # fmt: skip
                top = gr.Label(num_top_classes=TOP_K, label=f"top {TOP_K} classes", elem_id="top")
        outputs = [view, cam, top, verdict]
        events = {"concurrency_id": _CONCURRENCY, "concurrency_limit": 1}
        upload.upload(from_file, [upload, tta, layer], [current, *outputs], api_name="classify",
                      **events)  # fmt: skip
        upload.clear(from_file, [upload, tta, layer], [current, *outputs],
                     api_visibility="private", **events)  # fmt: skip
        for control in (tta, layer):
            control.input(show, [current, tta, layer], outputs, api_visibility="private",
                          **events)  # fmt: skip
        if strip is not None and len(strip.labels):
            gallery = _gallery(gr, strip)
            gallery.select(from_strip, [tta, layer], [current, *outputs],
                           api_visibility="private", **events)  # fmt: skip
    return page


def _handlers(gr: Any, model: TrainedModel, strip: Strip | None) -> tuple[Any, Any, Any]:
    """The page's event handlers: ``show`` the current image; pick an uploaded file; pick
    a test image of the strip. Each returns what the outputs show (and the new current)."""

    def show(current: Any, tta: bool, layer: str) -> tuple[Any, Any, Any, str]:
        if current is None:
            return None, None, None, HINT
        kind, value = current
        try:
            image = strip.images[value] if kind == "test" else read_upload(value)
            result = explain(model, image, tta=bool(tta), layer=layer or DEFAULT_LAYER)
        except CifarResnetError as e:
            return None, None, None, f"**Cannot use this file**: {_plain(oneline(e))}"
        text = describe(result)
        if kind == "test":
            text += f"  \ntest image {int(strip.indices[value])}: {_plain(strip.caption(value))}"
        cam = overlay(result.view, result.cam, VIEW_SCALE)
        return enlarge(result.view, VIEW_SCALE), cam, dict(result.top), text

    def from_file(path: str | None, tta: bool, layer: str) -> tuple[Any, ...]:
        current = None if path is None else ("file", str(path))
        return current, *show(current, tta, layer)

    def from_strip(tta: bool, layer: str, evt: gr.SelectData) -> tuple[Any, ...]:
        current = ("test", int(evt.index))
        return current, *show(current, tta, layer)

    return show, from_file, from_strip


def _gallery(gr: Any, strip: Strip) -> Any:
    """The strip of test images under a line saying what it is: a row per image of each class."""
    n, columns = len(strip.labels), len(strip.classes)
    gr.Markdown("**Test images** with their classes: click one. A red frame and ✗ mark the "
                "model's mistakes.")  # fmt: skip
    return gr.Gallery(
        [(thumbnail(strip, i, THUMB_SCALE), strip.label(i)) for i in range(n)],
        show_label=False, columns=columns, rows=-(-n // columns), height="auto",
        allow_preview=False, format="png", elem_id="strip",
    )  # fmt: skip


def serve(
    page: Any, *, host: str | None = None, port: int | None = None, block: bool = False
) -> str:
    """Serve ``page``; its local URL. ``host`` and ``port`` default to Gradio's (127.0.0.1 and
    7860 or the next free port; its environment variables, as on a Space, set them).
    ``block``: serve until interrupted, Gradio printing the URL; else in the background."""
    gr = require_gradio()
    fonts = {  # the system's, not web fonts fetched from elsewhere
        "font": [gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")],
        "font_mono": [gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")],
    }
    if host is not None:
        _check_address(host, port)
    # Gradio's queue sets pandas options that pandas warns about on every request
    warnings.filterwarnings("ignore", module=r"gradio\.")
    page.queue(default_concurrency_limit=1)
    try:
        _, url, _ = page.launch(
            server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
            share=False, max_file_size=MAX_FILE_SIZE, theme=gr.themes.Default(**fonts),
            ssr_mode=False, mcp_server=False, footer_links=["api"],
        )  # fmt: skip
    except OSError as e:  # a port taken since the check, or none free from 7860 on
        raise ConfigError(
            f"cannot serve the demo: {oneline(e, 120)}; pass another --port"
        ) from None
    return url


def _check_address(host: str, port: int | None) -> None:
    """A one-line error unless ``host`` (and ``port``, when given) can be served on: Gradio
    would log an error for every port it tries."""
    where = f"{host}:{port}" if port else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port or 0, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        flag = "--port" if port and e.errno == errno.EADDRINUSE else "--host"
        reason = e.strerror or oneline(e)
        raise ConfigError(
            f"cannot serve the demo on {where}: {reason}; pass another {flag}"
        ) from None


def _heading(model: TrainedModel, name: str) -> str:
    c = model.config
    recorded = model.recorded_test_acc
    acc = f", test accuracy {recorded:.2%} recorded" if recorded is not None else ""
    return (
        f"## ResNet-9 on CIFAR-10\n"
        f"{_plain(name or 'model')}: width {c.width:g}, `{c.recipe}` recipe, epoch {model.epoch}"
        f"{acc}; on {model.runtime.describe()}. An image of any size is cut to its central "
        f"square and shrunk to 32x32, as `{PROG} predict` does."
    )


def _plain(text: str) -> str:
    """``text`` with Markdown's special characters escaped, so it shows as typed."""
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)
