import numpy as np
import pytest
import torch

from cifar_resnet.training.schedule import one_cycle_lr, one_cycle_scheduler


def _spec_lr(step, spe, epochs, peak_epoch, lo, hi):
    """The spec in words: min at step 0, max at the last step of the peak epoch, min at the end."""
    return float(np.interp(step, [0, peak_epoch * spe - 1, epochs * spe - 1], [lo, hi, lo]))


@pytest.mark.parametrize(("spe", "epochs", "peak"), [(98, 24, 5), (7, 6, 2), (5, 3, 1)])
def test_scheduler_lr_at_every_step_matches_the_closed_form(spe, epochs, peak):
    lo, hi = 4e-4, 4e-3
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=123.0)
    sched = one_cycle_scheduler(
        opt, steps_per_epoch=spe, epochs=epochs, peak_epoch=peak, min_lr=lo, max_lr=hi
    )
    seen = []
    for _ in range(spe * epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [_spec_lr(s, spe, epochs, peak, lo, hi) for s in range(spe * epochs)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12, atol=0)
    assert seen[0] == pytest.approx(lo, rel=1e-12)
    assert seen[peak * spe - 1] == pytest.approx(hi, rel=1e-12)
    assert max(seen) == pytest.approx(hi, rel=1e-12)
    assert seen[-1] == pytest.approx(lo, rel=1e-12)
    assert min(seen) >= lo * (1 - 1e-12)
    # past the end (the scheduler is stepped once more) it stays at LRMIN, never below
    assert opt.param_groups[0]["lr"] >= lo * (1 - 1e-12)


def test_spec_defaults_peak_at_end_of_epoch_five():
    spe, total = 98, 98 * 24
    lrs = [
        one_cycle_lr(s, total_steps=total, peak_step=5 * spe - 1, min_lr=1e-4, max_lr=1e-3)
        for s in range(total)
    ]
    assert int(np.argmax(lrs)) == 5 * spe - 1
    assert np.all(np.diff(lrs[: 5 * spe]) > 0)
    assert np.all(np.diff(lrs[5 * spe - 1 :]) < 0)


def test_peak_at_the_last_epoch_rises_over_the_whole_run():
    lrs = [
        one_cycle_lr(s, total_steps=12, peak_step=11, min_lr=1.0, max_lr=12.0) for s in range(12)
    ]
    assert lrs == pytest.approx([1.0 + s for s in range(12)], rel=1e-12)


def test_a_single_step_rise_starts_at_the_peak():
    assert one_cycle_lr(0, total_steps=3, peak_step=0, min_lr=1.0, max_lr=2.0) == 2.0
    assert one_cycle_lr(2, total_steps=3, peak_step=0, min_lr=1.0, max_lr=2.0) == 1.0


def test_pages_schedule_runs_from_zero_to_its_peak_and_back_to_zero():
    spe, total = 98, 98 * 24
    lrs = [
        one_cycle_lr(s, total_steps=total, peak_step=5 * spe - 1, min_lr=0.0, max_lr=0.4)
        for s in range(total)
    ]
    assert lrs[0] == 0.0 and lrs[-1] == 0.0 and max(lrs) == lrs[5 * spe - 1] == 0.4
    assert lrs[spe] == pytest.approx(0.4 * spe / (5 * spe - 1))  # linear from 0


def test_the_fall_can_end_early_at_a_fraction_of_the_peak_and_hold_there():
    """Page's 10-epoch schedule: 0 -> peak after epoch 2, down to a tenth of it at the end
    of epoch 8, held for the last two; a group with lr_scale 64 gets 64 times every LR."""
    spe, epochs, peak, hold, hi = 7, 10, 2, 2, 1.0
    weights, biases = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [weights]}, {"params": [biases], "lr_scale": 64.0}], lr=9.0)
    sched = one_cycle_scheduler(
        opt, steps_per_epoch=spe, epochs=epochs, peak_epoch=peak, min_lr=0.0, max_lr=hi,
        hold_epochs=hold, end_lr_ratio=0.1,
    )  # fmt: skip
    seen = []
    for _ in range(spe * epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    knots = [0, peak * spe - 1, (epochs - hold) * spe - 1]  # np.interp holds past the last
    expected = [float(np.interp(s, knots, [0.0, hi, 0.1 * hi])) for s in range(spe * epochs)]
    np.testing.assert_allclose([w for w, _ in seen], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([b for _, b in seen], [64 * e for e in expected], rtol=1e-12)
    np.testing.assert_allclose(seen[-hold * spe :], [[0.1, 6.4]] * (hold * spe), rtol=1e-12)


def test_a_floor_above_the_fraction_wins():
    lr = one_cycle_lr(99, total_steps=100, peak_step=10, min_lr=0.2, max_lr=1.0, end_lr=0.1)
    assert lr == pytest.approx(0.2)
