import base64
import binascii
import html.parser
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import write_pickles
from PIL import Image

from cifar_resnet import cli
from cifar_resnet.config import TrainConfig
from cifar_resnet.data.load import Cifar10
from cifar_resnet.data.splits import Split
from cifar_resnet.errors import CheckpointError, DataError
from cifar_resnet.inference.calibration import calibration
from cifar_resnet.inference.evaluation import evaluate
from cifar_resnet.inference.metrics import select_misclassified
from cifar_resnet.insight.report import SECTIONS, build_report, load_run
from cifar_resnet.model.custom_resnet import count_parameters
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.runtime import resolve_runtime
from cifar_resnet.training.fit import fit

EXPECTED_FIGURES = (
    "loss and accuracy per epoch, train and test",
    "learning rate of every optimizer step",
    "LR range test with LRMAX and LRMIN",
    "confusion matrix",
    "per-class accuracy",
    "reliability diagram, plain",
    "reliability diagram, flip TTA",
    "misclassified test images with predicted and actual class",
    "Grad-CAM maps for the predicted and the actual class",
    "class distribution of train and test",
    "sample training images with labels",
    "the same images after training augmentation",
)


class _Page(html.parser.HTMLParser):
    """Collects images, links, scripts and section ids; checks that block tags are balanced."""

    BLOCKS = {"html", "body", "main", "section", "div", "table", "pre", "nav", "details"}

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.scripts = 0
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.scripts += 1
        if tag == "section":
            self.sections.append(a["id"])
        if tag in self.BLOCKS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    assert p.stack == []
    return p


def _decode(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    raw = base64.b64decode(uri[len(prefix) :], validate=True)
    im = Image.open(io.BytesIO(raw))
    im.load()
    return im


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic) -> Path:
    """A real 1-epoch run whose LRs the range test chose (so lr_finder.json exists)."""
    out = tmp_path_factory.mktemp("report") / "run"
    config = TrainConfig(  # plain weights and loss: one epoch leaves a full gallery of mistakes
        width=0.25,
        epochs=1,
        peak_epoch=1,
        batch_size=100,
        finder_num_iter=12,
        ema_decay=0.0,
        label_smoothing=0.0,
        device="cpu",
    )
    fit(config, synthetic, run=RunFolder(out), progress=False)
    return out


@pytest.fixture(scope="module")
def results(run_dir, synthetic):
    return load_run(run_dir, data=synthetic, device="cpu")


@pytest.fixture(scope="module")
def page(results) -> str:
    return build_report(results)


def test_predictions_are_the_test_split_as_training_evaluated_it(results, run_dir, synthetic):
    final = json.loads((run_dir / "final.json").read_text())
    assert results.logits.shape == (200, 10)
    accuracy = (results.logits.argmax(1) == synthetic.test_labels).float().mean().item()
    assert accuracy == pytest.approx(final["test_acc"], abs=1e-6)
    assert not results.model.training
    assert torch.allclose(results.mean, torch.tensor(final["mean"]))
    assert results.lr_finder is not None and results.lr_finder.max_lr == final["max_lr"]
    assert len(results.step_lrs) == 6  # 600 images / batch 100, one epoch


def test_report_has_every_section_in_order(page):
    p = _parse(page)
    assert p.sections == [key for key, _ in SECTIONS]
    assert [link for link in p.links if link.startswith("#")] == [f"#{k}" for k, _ in SECTIONS]
    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in page


def test_every_image_is_an_embedded_png_that_decodes(page):
    p = _parse(page)
    assert [img["alt"] for img in p.images] == list(EXPECTED_FIGURES)
    for img in p.images:
        im = _decode(img["src"])
        assert im.format == "PNG" and min(im.size) >= 200


def test_calibration_section_has_the_figures_plain_and_with_tta(page, results, synthetic):
    labels = synthetic.test_labels
    section = page[page.index('<section id="calibration">') :]
    section = section[: section.index("</section>")]
    assert "15 equal-width bins" in section
    for name, flipped in (("plain", None), ("flip TTA", results.flipped_logits())):
        c = calibration(results.logits, labels, flipped)
        row = (
            f"<tr><th>{name}</th><td class='n'>{c.acc:.2%}</td><td class='n'>"
            f"{c.confidence:.2%}</td><td class='n'>{c.ece:.2%}</td><td class='n'>{c.nll:.4f}"
            f"</td><td class='n'>{c.brier:.4f}</td></tr>"
        )
        assert row in section, name
    assert [img["alt"] for img in _parse(section + "</section>").images] == [
        "reliability diagram, plain",
        "reliability diagram, flip TTA",
    ]


def test_the_reports_tta_is_the_one_training_evaluates(results, synthetic):
    split = Split(synthetic.test_images, synthetic.test_labels, results.mean, results.std)
    runtime = resolve_runtime("cpu", results.config.precision)
    scores = evaluate(results.model, split, runtime, tta=True)
    flipped = results.flipped_logits()
    assert flipped.shape == results.logits.shape and not torch.equal(flipped, results.logits)
    tta = calibration(results.logits, synthetic.test_labels, flipped)
    assert tta.acc == scores.tta_acc
    assert tta.nll == pytest.approx(scores.tta_loss, rel=1e-5)


def test_self_contained_no_scripts_no_network(page):
    p = _parse(page)
    assert p.scripts == 0
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "url(" not in page  # no fonts or images pulled in by CSS
    assert len(page.encode()) < 4_000_000


def test_gallery_and_grad_cam_cover_the_most_confident_mistakes(page, results, synthetic):
    mistakes = select_misclassified(results.logits, synthetic.test_labels)
    assert len(mistakes) >= 25
    assert f"{len(mistakes):,} of 200 test images are misclassified" in page
    assert "the 25 with the most confident wrong prediction are shown" in page
    assert "The 10 most confident mistakes" in page and "<code>layer2</code>" in page


def test_summary_config_timings_and_device(page, results, run_dir):
    final = json.loads((run_dir / "final.json").read_text())
    total = f"Total params: {count_parameters(results.model):,}"
    assert re.search(r"<pre>[^<]*" + re.escape(total), page)
    config = json.loads((run_dir / "config.json").read_text())
    assert "<th>lr_source</th><td>found</td>" in page
    assert f"<th>finder_num_iter</th><td>{config['finder_num_iter']}</td>" in page
    assert f"<th>device</th><td>{final['device']}</td>" in page
    cpu, cores = final["machine"]["cpu"], final["machine"]["logical_cores"]
    assert re.search(f"<th>machine</th><td>{re.escape(cpu)}, {cores} logical cores, ", page)
    assert f"<th>precision</th><td>{final['precision']}</td>" in page
    assert config["precision"] == final["precision"] in ("fp32", "bf16")  # resolved, not auto
    assert f"{final['train_seconds']:.1f} s" in page
    assert f"{final['test_acc']:.2%}" in page
    assert "<th>train mean</th>" in page and "<th>test std</th>" in page


def test_gradcam_layer_is_selectable(results):
    page = build_report(results, gradcam_layer="layer1", gallery_size=5, gradcam_count=2)
    assert "<code>layer1</code>" in page
    assert "the 5 with the most confident" in page and "The 2 most confident" in page


def test_unfinished_run_still_reports_from_its_checkpoint(run_dir, synthetic, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    for name in ("final.json", "metrics.jsonl", "lr_finder.json"):
        (partial / name).unlink()
    page = build_report(load_run(partial, data=synthetic, device="cpu"))
    assert "final.json is missing" in page
    assert "The LRs were given" not in page or "no LR range test" in page
    assert len(_parse(page).images) == len(EXPECTED_FIGURES) - 1  # no LR-finder plot


def test_load_run_errors_are_one_line(tmp_path, run_dir, synthetic):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run(tmp_path, data=synthetic)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_run(tmp_path / "missing", data=synthetic)
    other = Cifar10(
        synthetic.train_images,
        synthetic.train_labels,
        synthetic.test_images,
        synthetic.test_labels,
        tuple(f"c{i}" for i in range(10)),
        "other",
    )
    with pytest.raises(DataError, match="--data-dir") as e:
        load_run(run_dir, data=other)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Command line: train writes the report (the shared tiny_run, trained with --limit-test 150);
# report rebuilds it


def test_train_writes_report_html(tiny_run):
    page = (tiny_run / "report.html").read_text()
    p = _parse(page)
    assert p.sections == [key for key, _ in SECTIONS]
    assert "of 150 test images are misclassified" in page  # --limit-test applied
    assert "The LRs were given, so no LR range test ran" in page
    for key, value in (("recipe", "spec"), ("optimizer", "adam"), ("precision", "bf16|fp32")):
        assert re.search(f"<tr><th>{key}</th><td>({value})</td></tr>", page), key
    for img in p.images:
        _decode(img["src"])


def test_report_command_rebuilds_with_another_data_dir(tiny_run, tmp_path, synthetic, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    moved = write_pickles(tmp_path / "elsewhere", synthetic)
    (run / "report.html").unlink()
    argv = ["report", str(run), "--data-dir", str(moved), "--cache-dir", str(tmp_path)]
    code = cli.main([*argv, "--device", "cpu", "--gradcam-layer", "layer3", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"report in {run / 'report.html'}" in out
    page = (run / "report.html").read_text()
    assert "<code>layer3</code>" in page and str(moved.resolve()) in page


def test_report_command_errors(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cifar-resnet: error: no checkpoint")
    assert cli.main(["report", str(tmp_path), "--gradcam-layer", "head"]) == 2
    assert "layer1, layer2, layer3" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_train_no_report_flag():
    args = cli.build_parser().parse_args(["train", "--no-report"])
    assert args.report is False
    assert cli.build_parser().parse_args(["train", "--report"]).report is True
    # not given: a new run writes its report, a resumed one does as its run was started
    assert cli.build_parser().parse_args(["train"]).report is None


# ---------------------------------------------------------------------------------------------
# A real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_CHECK = (
    "<script>window.addEventListener('load',function(){var im=document.images,b=0;"
    "for(var i=0;i<im.length;i++){if(!im[i].complete||im[i].naturalWidth===0)b++;}"
    "var d=document.createElement('div');d.id='img-check';"
    "d.textContent='images='+im.length+' broken='+b;document.body.appendChild(d);});</script>"
)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--run-all-compositor-stages-before-draw",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(page, tmp_path):
    report = tmp_path / "report.html"
    report.write_text(page)
    # The shipped page has no script: a copy gets one that counts images that failed to load.
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", _CHECK + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", checked.as_uri())
    found = re.search(r"images=(\d+) broken=(\d+)", dom.stdout)
    assert found, dom.stderr[-2000:]
    assert int(found.group(1)) == len(EXPECTED_FIGURES)
    assert int(found.group(2)) == 0

    shot = tmp_path / "screenshot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    assert rgb.size == (1280, 2000)
    colours = rgb.getcolors(maxcolors=1 << 24)
    assert len(colours) > 1000  # text, plots and images, not a blank page
    most = max(count for count, _ in colours)
    assert most < 0.9 * rgb.size[0] * rgb.size[1]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_check_detects_a_broken_image(page, tmp_path):
    broken = page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1)
    checked = tmp_path / "broken.html"
    checked.write_text(broken.replace("</body>", _CHECK + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", checked.as_uri())
    assert re.search(r"broken=1\b", dom.stdout), dom.stdout[-500:]
    with pytest.raises((binascii.Error, OSError)):
        p = _parse(broken)
        for img in p.images:
            _decode(img["src"])
