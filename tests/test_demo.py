"""The demo (insight/demo.py, insight/demo_app.py, ``cifar-resnet demo``): what it shows of an
image, the files it refuses, and the page served over HTTP and driven in a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from cifar_resnet.errors import DataError
from cifar_resnet.inference.evaluation import predict_logits
from cifar_resnet.inference.predict import load_image, load_model, predict, to_batch
from cifar_resnet.insight.demo import (
    MAX_PIXELS,
    TOP_K,
    explain,
    make_strip,
    read_upload,
    thumbnail,
)
from cifar_resnet.insight.gradcam import GRADCAM_LAYERS
from cifar_resnet.plots import enlarge, overlay

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_ENV = "CIFAR_RESNET_DEMO_SCREENSHOT"  # set: the browser test writes its picture here
MODEL_ENV = "CIFAR_RESNET_DEMO_MODEL"  # set: the browser test serves this model (a run folder)


@pytest.fixture(scope="module")
def model(tiny_run):
    return load_model(tiny_run)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 60x40 RGBA PNG lying on its side (EXIF orientation 6): not what the net takes."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 4), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels, "RGBA").save(path, exif=exif)
    return path


# ---------------------------------------------------------------------------------------------
# What the page shows of an image


def test_explain_gives_the_top_five_and_a_grad_cam_map_in_the_unit_range(model, synthetic):
    image = synthetic.test_images[3]
    for layer in GRADCAM_LAYERS:
        result = explain(model, image, layer=layer)
        names = [name for name, _ in result.top]
        probs = [p for _, p in result.top]
        assert len(result.top) == TOP_K and len(set(names)) == TOP_K
        assert set(names) <= set(model.classes)
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) < 1  # five of ten classes
        assert names[0] == predict(model, image).names[0]
        assert result.cam.shape == (32, 32) and result.cam.dtype == torch.float32
        assert result.cam.min() >= 0 and result.cam.max() <= 1
        assert torch.equal(result.view, image) and result.layer == layer


def test_tta_is_the_mean_of_the_softmax_of_the_image_and_of_its_mirror_image(model, synthetic):
    image = synthetic.test_images[7]
    batch = torch.stack([image, image.flip(-1)])  # (2, 3, 32, 32): the image, its mirror image
    logits = predict_logits(model.model, batch, model.mean, model.std, model.runtime)
    mean = logits.softmax(1).mean(0)  # (C,)
    result = explain(model, image, tta=True)
    for name, p in result.top:
        assert p == pytest.approx(float(mean[model.classes.index(name)]), abs=1e-6)
    assert result.top[0][0] == model.classes[int(mean.argmax())]
    plain = explain(model, image)
    assert plain.top[0][1] == pytest.approx(float(logits[0].softmax(0).max()), abs=1e-6)


def test_an_upload_is_read_as_predict_reads_a_file(photo):
    view = read_upload(photo)
    assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
    assert torch.equal(view, load_image(photo))
    assert torch.equal(view, to_batch([photo])[0])  # what cifar-resnet predict feeds the net


def _huge(folder: Path) -> Path:
    path = folder / "huge.png"
    Image.new("1", (8000, 7000)).save(path)  # 56 megapixels, a few kB on disk
    return path


def _truncated(folder: Path) -> Path:
    whole = folder / "whole.png"
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(whole)
    path = folder / "cut.png"
    path.write_bytes(whole.read_bytes()[:2000])
    return path


BAD_UPLOADS = {
    "empty": (lambda d: _write(d / "empty.png", b""), r"empty.png is empty \(0 bytes\)"),
    "text": (lambda d: _write(d / "notes.txt", b"not a picture\n"), r"notes.txt is not an image"),
    "truncated": (_truncated, r"cut.png is not an image Pillow can read \(image file is trunc"),
    "huge": (_huge, r"huge.png is 8000x7000 pixels \(56 megapixels\); .* up to 50 megapixels"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_a_file_the_demo_cannot_use_is_refused_with_a_message_saying_why(kind, tmp_path):
    make, message = BAD_UPLOADS[kind]
    with pytest.raises(DataError, match=message):
        read_upload(make(tmp_path))
    assert MAX_PIXELS == 50_000_000


def test_a_checkpoint_dropped_as_an_image_is_refused(tiny_run):
    with pytest.raises(DataError, match=r"last.pt is not an image Pillow can read"):
        read_upload(tiny_run / "checkpoints" / "last.pt")


def test_the_strip_holds_the_first_of_each_class_with_the_models_mistakes_marked(model, synthetic):
    images, labels = synthetic.test_images, synthetic.test_labels
    strip = make_strip(model, images, labels, per_class=2)
    assert strip.labels.tolist() == list(range(10)) * 2  # a run of ten: one of each class
    first_cat = int(torch.nonzero(labels == 3)[0])
    assert int(strip.indices[3]) == first_cat
    assert torch.equal(strip.images, images[strip.indices])
    assert torch.equal(strip.predicted, predict(model, strip.images).labels)
    for i in range(len(strip.labels)):
        corner = thumbnail(strip, i, 2)[0, 0].tolist()
        wrong = int(strip.predicted[i]) != int(strip.labels[i])
        assert (corner == [214, 39, 40]) == wrong
        assert strip.wrong(i) == wrong and strip.label(i).startswith("✗ ") == wrong
        assert ("taken for" in strip.caption(i)) == wrong


def test_the_view_is_drawn_pixel_by_pixel_and_the_map_over_it():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    big = enlarge(image, 8)
    assert big.shape == (256, 256, 3) and big.dtype == np.uint8
    assert (big[8 * 5 : 8 * 6, 8 * 9 : 8 * 10] == image[:, 5, 9].numpy()).all()
    cold, hot = overlay(image, torch.zeros(32, 32), 8), overlay(image, torch.ones(32, 32), 8)
    assert cold.shape == hot.shape == (256, 256, 3)
    # jet runs from blue (0) to red (1): a hot map is redder than a cold one everywhere
    assert (hot[..., 0].astype(int) > cold[..., 0].astype(int)).all()
    assert (hot[..., 2].astype(int) < cold[..., 2].astype(int)).all()


# ---------------------------------------------------------------------------------------------
# The command line


def test_without_gradio_the_command_is_a_one_line_error_naming_the_extra(
    tiny_run, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    code, out, err = run_cli(["demo", str(tiny_run)], capsys)
    assert code == 2 and out == ""
    assert err == (
        "cifar-resnet: error: cifar-resnet demo needs Gradio; install it with: "
        "pip install 'cifar-resnet[demo]'\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], r"--port: must be a port number in \[1, 65535\], got '0'"),
        (["--port", "70000"], r"--port: must be a port number"),
        (["--device", "tpu"], r"--device"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, tiny_run, capsys):
    code, out, err = run_cli(["demo", str(tiny_run), *argv], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(message, err)


def test_a_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("gradio")  # else the missing extra is reported first
    other = tmp_path / "other.pt"
    torch.save({"format": "someone-else/3", "weights": {}}, other)
    for path, message in (
        (tmp_path / "nowhere", "nowhere"),
        (other, "is not a cifar-resnet checkpoint"),
    ):
        code, out, err = run_cli(["demo", str(path)], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("cifar-resnet: error: ") and message in err


def test_a_port_in_use_or_a_missing_data_dir_is_a_one_line_error(tiny_run, tmp_path, capsys):
    pytest.importorskip("gradio")
    code, out, err = run_cli(["demo", str(tiny_run), "--data-dir", str(tmp_path / "no")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(["demo", str(tiny_run), "--port", str(port)], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"cifar-resnet: error: cannot serve the demo on 127.0.0.1:{port}: Address already in "
        "use; pass another --port\n"
    )


# ---------------------------------------------------------------------------------------------
# The page, served


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(model, synthetic):
    """The page of the tiny run, with its strip, served on a free port of 127.0.0.1."""
    pytest.importorskip("gradio", reason="the demo extra is not installed")
    from cifar_resnet.insight.demo_app import build_page, serve

    strip = make_strip(model, synthetic.test_images, synthetic.test_labels)
    page = build_page(model, strip, name="tiny run")
    url = serve(page, host="127.0.0.1", port=_free_port())
    yield url
    page.close()


def test_the_page_answers_over_http_as_predict_does_and_survives_bad_files(
    served, model, photo, tmp_path, monkeypatch
):
    client_module = pytest.importorskip("gradio_client")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    client = client_module.Client(served, verbose=False, analytics_enabled=False,
                                  download_files=False)  # fmt: skip
    upload = client_module.handle_file

    def classify(path: Path, tta: bool = False) -> tuple:
        return client.predict(upload(str(path)), tta, "layer2", api_name="/classify")

    for tta in (False, True):
        view, cam, top, verdict = classify(photo, tta)
        expected = predict(model, [photo], tta=tta)
        assert top["label"] == expected.names[0]
        shown = {c["label"]: c["confidence"] for c in top["confidences"]}
        assert shown == pytest.approx(dict(expected.top_k(TOP_K)[0]), abs=1e-6)
        assert verdict.startswith(f"**{expected.names[0]}** ")
        with Image.open(view["path"]) as im:  # the file the page shows, on this machine
            assert np.array_equal(np.asarray(im.convert("RGB")), enlarge(load_image(photo), 8))
        with Image.open(cam["path"]) as im:
            assert im.size == (256, 256)

    bad = _write(tmp_path / "notes.txt", b"not a picture\n")
    view, cam, top, verdict = classify(bad)
    assert view is None and cam is None
    assert verdict.startswith("**Cannot use this file**: notes.txt is not an image")
    assert classify(photo)[2]["label"] == predict(model, [photo]).names[0]  # still serving


@pytest.mark.slow  # over ten seconds when it is the first to import Gradio
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_an_image_uploaded_in_the_browser_gets_the_class_predict_gives(
    tiny_run, synthetic, tmp_path, capsys, monkeypatch
):
    """Headless Chromium (the system's, driven by Playwright) drops a test image on the page
    and reads the class back; with CIFAR_RESNET_DEMO_SCREENSHOT set, the screenshot goes
    there (docs/demo.png in the README was taken so, with CIFAR_RESNET_DEMO_MODEL naming a
    run trained on CIFAR-10)."""
    pytest.importorskip("gradio", reason="the demo extra is not installed")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from cifar_resnet.data.load import load_cifar10
    from cifar_resnet.inference.predict import select_test_split
    from cifar_resnet.insight.demo_app import build_page, serve

    run = Path(os.environ.get(MODEL_ENV) or tiny_run)
    model = load_model(run)
    if MODEL_ENV in os.environ:
        data = load_cifar10(model.config.data_dir, model.config.cache_dir, progress=False)
        images, labels = select_test_split(model, data)
    else:
        images, labels = synthetic.test_images, synthetic.test_labels
    image = tmp_path / "test-image.png"
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(image)
    code, out, err = run_cli(["predict", "--checkpoint", str(run), str(image), "--json"], capsys)
    assert code == 0, err
    expected = json.loads(out)["predictions"][0]["top_k"][0]["class"]

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    strip = make_strip(model, images, labels)
    page = build_page(model, strip, name=run.name)
    url = serve(page, host="127.0.0.1", port=_free_port())
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "demo.png")
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            tab = browser.new_page(viewport={"width": 1280, "height": 1000})
            fetched: list[str] = []
            tab.on("request", lambda request: fetched.append(request.url))
            tab.goto(url)
            tab.locator("#upload input[type=file]").set_input_files(str(image))
            verdict = tab.locator("#verdict")
            verdict.filter(has_text="%").wait_for(timeout=60_000)
            tab.locator("#cam img").wait_for(timeout=30_000)
            text = verdict.inner_text()
            tab.screenshot(path=str(shot), full_page=True)
            # the first test image of class 3 (cat), as its caption reads
            tab.locator("#strip").get_by_text(strip.label(3), exact=True).first.click()
            verdict.filter(has_text="test image").wait_for(timeout=60_000)
            clicked = verdict.inner_text()
            browser.close()
    finally:
        page.close()
    assert text.split()[0] == expected, text
    assert [u for u in fetched if not u.startswith((url, "data:", "blob:"))] == []  # no web fonts
    assert f"test image {int(strip.indices[3])}: true class cat" in clicked
    with Image.open(shot) as im:
        assert im.width == 1280 and len(im.convert("RGB").getcolors(1 << 24)) > 1000


# ---------------------------------------------------------------------------------------------
# The command, as a user starts it


@pytest.mark.slow
def test_the_command_prints_its_url_serves_and_stops_on_ctrl_c(tiny_run, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed")
    client_module = pytest.importorskip("gradio_client")
    port = _free_port()
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar_resnet", "demo", str(tiny_run), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        printed = rf"demo of {re.escape(str(tiny_run))} on .+ at http://127\.0\.0\.1:{port}/ "
        assert re.fullmatch(printed + r"\(Ctrl\+C stops it\)\n", line), line
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                      analytics_enabled=False, download_files=False)  # fmt: skip
        image = tmp_path / "red.png"
        Image.new("RGB", (100, 70), (200, 30, 30)).save(image)
        top = client.predict(client_module.handle_file(str(image)), False, "layer2",
                             api_name="/classify")[2]  # fmt: skip
        assert top["label"] == predict(load_model(tiny_run), [image]).names[0]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
