import json

import numpy as np
import pytest
import torch
from torch import nn

from cifar_resnet.errors import ConfigError
from cifar_resnet.plots import plot_lr_finder
from cifar_resnet.training.fit import find_lr
from cifar_resnet.training.lr_finder import (
    FLOOR_SCALE,
    Sweep,
    choose_lrs,
    smooth_curve,
    valley_floor,
    with_spread,
)


def _quadratic_problem(seed=0, n=256, d=8):
    """Least squares whose full-batch gradient descent diverges exactly above LR = 1."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g))
    x = q * n**0.5 * torch.logspace(-1, 0, d)  # X^T X / n has eigenvalues 0.01..1
    y = x @ torch.randn(d, 1, generator=g) + 0.01 * torch.randn(n, 1, generator=g)
    hessian_max = 2 * torch.linalg.eigvalsh(x.T @ x / n).max().item()  # of mean squared error
    return x, y, 2 / hessian_max


def _sweep(**kwargs):
    """The range test on the quadratic problem, full batch, plain SGD."""
    x, y, _ = _quadratic_problem()
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return find_lr(
        model, opt, nn.MSELoss(), lambda: iter([(x, y)]), Sweep(**kwargs), progress=False
    )


@pytest.mark.parametrize(("rule", "within"), [("valley", 10), ("steepest", 200)])
def test_chosen_lr_is_below_the_analytic_divergence_point(rule, within):
    _, _, lr_div = _quadratic_problem()
    assert lr_div == pytest.approx(1.0, rel=1e-5)
    result = _sweep(start_lr=1e-4, end_lr=100, num_iter=100, rule=rule)
    assert result.diverged
    assert lr_div / within <= result.max_lr < lr_div
    assert result.min_lr == pytest.approx(result.max_lr / 10)
    assert result.floor is None


def test_floor_rule_on_the_quadratic_straddles_the_divergence_point():
    """The sweep's floor runs past LR 1, where full-batch SGD diverges; the choice is its
    centre x 1.5, within a factor 2 of that point (the rule is fitted to Adam with warm-up)."""
    _, _, lr_div = _quadratic_problem()
    result = _sweep(start_lr=1e-4, end_lr=100, num_iter=100, rule="floor")
    low, high = result.floor
    assert low < lr_div / 2 and high > 2 * lr_div
    assert result.max_lr == pytest.approx((low * high) ** 0.5 * FLOOR_SCALE)
    assert lr_div / 2 <= result.max_lr <= 2 * lr_div
    assert result.min_lr == pytest.approx(result.max_lr / 10)


def test_early_stop_when_the_loss_diverges():
    result = _sweep(
        start_lr=1e-3,
        end_lr=1e4,
        num_iter=200,
    )
    assert result.diverged
    assert len(result.lrs) < 200
    means = np.convolve(result.losses, np.ones(5) / 5, mode="valid")
    assert means[-1] > 4 * means.min()  # the stop test: the last 5 steps' mean, 4x its best
    assert not means[-2] > 4 * means[:-1].min()  # ... and not a step earlier
    assert len(result.losses) == len(result.smoothed) == len(result.lrs)


def test_lrs_grow_exponentially_and_losses_are_recorded_raw(synthetic):
    result = _sweep(
        start_lr=1e-6,
        end_lr=1e-2,
        num_iter=20,
    )
    assert not result.diverged
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-6, 1e-2, 20), rtol=1e-9)
    # raw losses are the criterion's own values: the first equals the initial full loss
    x, y, _ = _quadratic_problem()
    torch.manual_seed(0)
    initial = nn.MSELoss()(nn.Linear(x.shape[1], 1, bias=False)(x), y).item()
    assert result.losses[0] == pytest.approx(initial, rel=1e-6)
    assert json.loads(json.dumps(result.to_dict()))["max_lr"] == result.max_lr


def test_model_optimizer_and_rng_state_are_restored_bit_exactly(synthetic):
    from cifar_resnet.config import TrainConfig
    from cifar_resnet.data.splits import EpochLength, prepare_splits
    from cifar_resnet.runtime import resolve_runtime
    from cifar_resnet.training.fit import find_training_lr
    from cifar_resnet.training.setup import Setup, build_model, build_optimizer

    config = TrainConfig(width=0.25, batch_size=64, finder_num_iter=12, dropout=0.1)
    runtime = resolve_runtime("cpu")
    train, test = prepare_splits(synthetic, config, runtime)
    torch.manual_seed(0)
    model = build_model(config)
    opt = build_optimizer(model, config, runtime)
    gen = torch.Generator().manual_seed(3)
    # give the optimizer some state first, so restoring it is not trivially "empty"
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    model.eval()
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = {
        k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()["state"].items()
    }
    before_groups = json.dumps(opt.state_dict()["param_groups"])
    cpu_rng, gen_state = torch.get_rng_state(), gen.get_state()

    epoch = EpochLength.of(len(train), config.batch_size, config.drop_last)
    setup = Setup(runtime, synthetic, train, test, epoch, model, opt, gen)
    result = find_training_lr(setup, config, progress=False)

    assert len(result.lrs) >= 3
    after_model = model.state_dict()
    assert before_model.keys() == after_model.keys()
    for k in before_model:  # weights and BatchNorm running stats, bit for bit
        assert torch.equal(before_model[k], after_model[k]), k
    after_opt = opt.state_dict()
    assert json.dumps(after_opt["param_groups"]) == before_groups
    for k, s in before_opt.items():
        for n, t in s.items():
            assert torch.equal(t, after_opt["state"][k][n]), (k, n)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(gen.get_state(), gen_state)
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr < end_lr"),
        ({"start_lr": 0.0}, "start_lr < end_lr"),
        ({"num_iter": 5}, "at least 10"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = lambda: iter([(torch.randn(4, 2), torch.randn(4, 1))])  # noqa: E731
    with pytest.raises(ConfigError, match=match):
        find_lr(model, opt, nn.MSELoss(), batches, Sweep(**kwargs), progress=False)


def test_valley_rule_is_the_loss_minimum_over_ten():
    lrs = list(np.geomspace(1e-5, 1, 50))
    loss = [3 - i * 0.05 for i in range(40)] + [1.5 + i for i in range(10)]
    max_lr, min_lr = choose_lrs(lrs, loss, rule="valley")
    assert max_lr == pytest.approx(lrs[39] / 10)
    assert min_lr == pytest.approx(max_lr / 10)


def _valley_curve(lrs: np.ndarray) -> np.ndarray:
    """Loss 3 below 1e-5, falling linearly in log10(LR) to 1 at 1e-3, flat to 1e-1, then rising."""
    x = np.log10(lrs)
    return np.where(
        x < -5, 3.0, np.where(x < -3, 3 - (x + 5), np.where(x < -1, 1.0, 1 + 4 * (x + 1)))
    )


def test_floor_rule_on_a_fixed_curve_is_the_floors_centre_times_its_scale():
    lrs = np.geomspace(1e-6, 1, 121) * 10**0.01  # 20 steps a decade, at 10**(k/20 + 0.01)
    loss = _valley_curve(lrs)
    # the floor: within 20% of the fall of 2, loss <= 1.4, i.e. 10**-3.4 <= LR <= 10**-0.9;
    # both edges fall between grid points, and are interpolated onto the curve exactly
    low, high = valley_floor(lrs, loss)
    assert low == pytest.approx(10**-3.4) and high == pytest.approx(10**-0.9)
    max_lr, min_lr = choose_lrs(lrs, loss, rule="floor", min_lr_divisor=5)
    assert max_lr == pytest.approx(10 ** ((-3.4 - 0.9) / 2) * FLOOR_SCALE)
    assert min_lr == pytest.approx(max_lr / 5)
    # a bump of noise anywhere on the floor moves the minimum, not the choice
    bumped = loss.copy()
    bumped[99] -= 0.05  # at LR 10**-1.04, the floor's right end: the minimum jumps there
    assert choose_lrs(lrs, bumped, rule="floor")[0] == pytest.approx(max_lr, rel=0.1)
    valley, valley_bumped = (choose_lrs(lrs, c, rule="valley")[0] for c in (loss, bumped))
    assert valley_bumped / valley == pytest.approx(10**1.95)  # from 10**-2.99 to 10**-1.04


def test_floor_edges_do_not_move_with_the_grid():
    """The same curve on grids offset by a fraction of a step: one choice, not one per grid."""
    choices = []
    for offset in (0.0, 0.013, 0.025, 0.037):
        lrs = np.geomspace(1e-6, 1, 121) * 10**offset
        choices.append(choose_lrs(lrs, _valley_curve(lrs), rule="floor")[0])
    assert max(choices) / min(choices) == pytest.approx(1.0, abs=1e-9)


def test_smoothing_is_measured_in_decades_not_steps():
    coarse, fine = np.geomspace(1e-6, 1, 101), np.geomspace(1e-6, 1, 401)
    rng = np.random.default_rng(0)
    smooth_coarse = smooth_curve(coarse, _valley_curve(coarse) + 0.02 * rng.standard_normal(101))
    smooth_fine = smooth_curve(fine, _valley_curve(fine) + 0.02 * rng.standard_normal(401))
    # the same LRs smoothed alike at 4x the steps; a centred kernel does not lag the curve
    # (the last half decade, where the kernel is one-sided on a steep rise, aside)
    np.testing.assert_allclose(smooth_fine[::4][:92], smooth_coarse[:92], atol=0.03)
    assert choose_lrs(coarse, smooth_coarse)[0] == pytest.approx(
        choose_lrs(fine, smooth_fine)[0], rel=0.1
    )


def test_a_loss_that_never_falls_is_a_one_line_error():
    lrs = np.geomspace(1e-6, 1, 50)
    with pytest.raises(ConfigError, match="never fell"):
        choose_lrs(lrs, np.linspace(2, 3, 50), rule="floor")


def test_plot_marks_both_choices_on_a_log_axis():
    result = _sweep(
        start_lr=1e-4,
        end_lr=100,
        num_iter=60,
    )
    fig = plot_lr_finder(result)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "learning rate"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(s.startswith("LRMAX") for s in labels)
    assert any(s.startswith("LRMIN") for s in labels)
    vlines = [line.get_xdata()[0] for line in ax.get_lines() if len(line.get_xdata()) == 2]
    assert result.max_lr in vlines and result.min_lr in vlines


def test_plot_of_several_seeds_draws_each_curve_and_choice():
    results = [_sweep(start_lr=1e-4, end_lr=100, num_iter=40 + 5 * i) for i in range(3)]
    fig = plot_lr_finder(with_spread(results[0], [0, 1, 2], results[1:]))
    ax = fig.axes[0]
    curves = {len(line.get_xdata()) for line in ax.get_lines()}
    assert {len(r.lrs) for r in results[1:]} <= curves  # the other seeds' smoothed curves
    ticks = [line.get_xdata()[0] for line in ax.get_lines() if len(line.get_xdata()) == 2]
    assert all(r.max_lr in ticks for r in results)
    ratio = max(r.max_lr for r in results) / min(r.max_lr for r in results)
    assert ax.get_title().endswith(f"spread {ratio:.2f}x")
