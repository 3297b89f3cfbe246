import json
import math

import pytest
import torch
from helpers import run_cli
from torchmetrics.classification import MulticlassCalibrationError

from cifar_resnet.data.load import load_cifar10
from cifar_resnet.inference.calibration import (
    N_BINS,
    calibration,
)
from cifar_resnet.inference.predict import evaluate_model, load_model, select_test_split
from cifar_resnet.plots import plot_reliability

# Five images, three classes; the bins are (k/15, (k+1)/15].
HAND_PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.05],  # label 0: right at 0.90, bin 13 (0.867, 0.933]
        [0.92, 0.04, 0.04],  # label 1: wrong at 0.92, bin 13
        [0.50, 0.30, 0.20],  # label 0: right at 0.50, bin 7 (0.467, 0.533]
        [0.20, 0.70, 0.10],  # label 2: wrong at 0.70, bin 10 (0.667, 0.733]
        [0.10, 0.28, 0.62],  # label 2: right at 0.62, bin 9 (0.600, 0.667]
    ],
    dtype=torch.float64,
)
HAND_LABELS = torch.tensor([0, 1, 0, 2, 2])


def _random_case(seed: int, n: int = 2000, classes: int = 10, scale: float = 3.0):
    """Logits spread over every bin, and labels right about 60% of the time."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * scale
    labels = torch.randint(0, classes, (n,), generator=g)
    labels = torch.where(torch.rand(n, generator=g) < 0.6, logits.argmax(1), labels)
    return logits, labels


def test_ece_of_a_case_worked_by_hand():
    result = calibration(HAND_PROBS.log(), HAND_LABELS)  # log-probabilities are logits
    # bin 13: 2 images, accuracy 1/2, confidence (0.90 + 0.92) / 2 = 0.91 -> 2/5 * 0.41
    # bins 7, 10, 9: one image each -> 1/5 * (|1 - 0.50| + |0 - 0.70| + |1 - 0.62|)
    assert result.ece == pytest.approx(2 / 5 * 0.41 + 1 / 5 * (0.50 + 0.70 + 0.38), abs=1e-12)
    assert result.ece == pytest.approx(0.48, abs=1e-12)
    expected_counts = [0] * N_BINS
    for k, count in {7: 1, 9: 1, 10: 1, 13: 2}.items():
        expected_counts[k] = count
    assert result.counts.tolist() == expected_counts
    assert result.bin_acc[13].item() == 0.5 and result.bin_acc[10].item() == 0.0
    assert result.bin_confidence[13].item() == pytest.approx(0.91)
    assert math.isnan(result.bin_acc[0].item())  # an empty bin has no accuracy
    assert result.acc == pytest.approx(3 / 5) and result.n == 5
    assert result.confidence == pytest.approx((0.90 + 0.92 + 0.50 + 0.70 + 0.62) / 5)


def test_bins_are_closed_on_the_right_and_a_certain_prediction_is_in_the_last():
    inf = math.inf
    logits = torch.tensor(
        [
            [0.0, -inf, -inf, -inf],  # confidence exactly 1
            [0.0, 0.0, -inf, -inf],  # exactly 0.5
            [0.0, 0.0, 0.0, 0.0],  # exactly 0.25
        ]
    )
    labels = torch.tensor([0, 1, 2])
    result = calibration(logits, labels)
    assert result.counts[-1].item() == 1  # 1 is in (14/15, 1]: no sixteenth bin for it
    assert result.counts[7].item() == 1  # 0.5, in (7/15, 8/15]
    assert result.counts.sum().item() == 3 and len(result.counts) == N_BINS
    quarters = calibration(logits, labels, n_bins=4)  # edges 0, 0.25, 0.5, 0.75, 1, exact
    assert quarters.counts.tolist() == [1, 1, 0, 1]  # 0.25 in (0, 0.25], 0.5 in (0.25, 0.5]
    assert quarters.ece == pytest.approx((0.0 + 0.5 + 0.25) / 3)  # right at 1, wrong below


@pytest.mark.parametrize(("seed", "scale"), [(0, 3.0), (1, 1.0), (2, 8.0)])
def test_ece_agrees_with_torchmetrics(seed, scale):
    logits, labels = _random_case(seed, scale=scale)
    reference = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    result = calibration(logits, labels)
    assert result.ece == pytest.approx(reference(logits, labels).item(), abs=1e-6)
    assert 0.01 < result.ece < 0.5  # a case with something to measure


def test_nll_is_torchs_cross_entropy():
    logits, labels = _random_case(3)
    expected = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert calibration(logits, labels).nll == pytest.approx(expected, rel=1e-12)


def test_brier_is_the_squared_error_summed_over_classes_and_averaged_over_images():
    logits, labels = _random_case(4, n=200)
    probs = logits.double().softmax(1).tolist()
    total = 0.0
    for row, label in zip(probs, labels.tolist(), strict=True):
        total += sum((p - (c == label)) ** 2 for c, p in enumerate(row))
    assert calibration(logits, labels).brier == pytest.approx(total / len(probs), rel=1e-12)


def test_tta_figures_are_those_of_the_mean_of_the_two_softmaxes():
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    flipped = torch.tensor([[-3.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([1, 0])
    plain = calibration(logits, labels)
    tta = calibration(logits, labels, flipped)
    assert plain.acc == 0.5  # image 0: class 0 plain
    assert tta.acc == 1.0  # ... but class 1 from the mean of the softmaxes
    mean = (logits.double().softmax(1) + flipped.double().softmax(1)) / 2
    assert tta.confidence == pytest.approx(mean.max(1).values.mean().item(), rel=1e-6)
    assert tta.nll == pytest.approx(-mean[[0, 1], labels].log().mean().item(), rel=1e-6)
    onehot = torch.eye(2, dtype=torch.float64)[labels]
    assert tta.brier == pytest.approx((mean - onehot).pow(2).sum(1).mean().item(), rel=1e-6)


def test_the_bin_table_adds_up_to_the_figures_in_plain_json():
    logits, labels = _random_case(5)
    result = calibration(logits, labels)
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    bins = record["bins"]
    assert record["n_bins"] == len(bins) == N_BINS and record["n"] == 2000
    assert bins[0]["lower"] == 0 and bins[-1]["upper"] == 1
    assert sum(b["count"] for b in bins) == 2000
    ece = sum(b["count"] / 2000 * abs(b["acc"] - b["confidence"]) for b in bins if b["count"])
    assert ece == pytest.approx(record["ece"], rel=1e-12)
    hits = sum(b["count"] * b["acc"] for b in bins if b["count"])
    assert hits / 2000 == pytest.approx(record["acc"], rel=1e-12)
    assert {b["acc"] for b in bins if not b["count"]} <= {None}


def test_reliability_diagram_draws_each_filled_bin_and_its_count():
    result = calibration(HAND_PROBS.log(), HAND_LABELS)
    fig = plot_reliability(result, "plain")
    ax, ax_n = fig.axes
    accuracy = [round(b.get_height(), 6) for b in ax.patches[:4]]
    assert accuracy == [100.0, 100.0, 0.0, 50.0]  # bins 7, 9, 10, 13, in %
    counts = [t.get_text() for t in ax_n.texts]
    assert counts == ["1", "1", "1", "2"]
    assert "ECE 48.00%" in ax.get_title()


def test_calibration_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="N = len"):
        calibration(torch.zeros(3, 10), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# A trained model: the figures describe what evaluate scores (the shared tiny_run)


def test_evaluate_model_scores_the_calibration_of_the_predictions_it_reports(tiny_run):
    model = load_model(tiny_run)
    data = load_cifar10(model.config.data_dir, model.config.cache_dir)
    images, labels = select_test_split(model, data, model.config.limit_test)
    evaluation = evaluate_model(model, images, labels, tta=True)
    result, tta = evaluation.calibration, evaluation.tta.calibration
    assert tta is not None and result.n == tta.n == 150
    assert result.acc == evaluation.acc and tta.acc == evaluation.tta.acc
    assert result.nll == pytest.approx(evaluation.loss, rel=1e-5)
    assert tta.nll == pytest.approx(evaluation.tta.loss, rel=1e-5)
    assert tta.nll != result.nll
    assert evaluate_model(model, images, labels).tta is None


def test_evaluate_prints_the_figures_and_its_json_carries_them(tiny_run, capsys):
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--tta", "--quiet"], capsys)
    assert code == 0
    table = out[out.index("calibration (15 equal-width") :].splitlines()
    assert table[1].split() == ["accuracy", "confidence", "ECE", "NLL", "Brier"]
    assert table[2].startswith("plain") and table[3].startswith("flip TTA")
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--tta", "--json"], capsys)
    record = json.loads(out)
    for figures, evaluated in ((record["calibration"], record), (record["tta"]["calibration"],
                                                                  record["tta"])):  # fmt: skip
        assert {"ece", "nll", "brier", "confidence", "acc", "n", "n_bins", "bins"} <= set(figures)
        assert figures["acc"] == evaluated["test_acc"] and figures["n_bins"] == 15
        assert figures["nll"] == pytest.approx(evaluated["test_loss"], rel=1e-5)
        assert sum(b["count"] for b in figures["bins"]) == 150
    assert table[2].split()[3] == f"{record['calibration']['ece']:.2%}"
    assert table[3].split()[4] == f"{record['tta']['calibration']['ece']:.2%}"
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--json"], capsys)
    record = json.loads(out)
    assert "calibration" in record and "tta" not in record
