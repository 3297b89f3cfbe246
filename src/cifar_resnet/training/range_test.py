"""The LR range test on its own: for one seed or several, and written to a folder.

``lr_range_test`` is the test ``fit`` would run for a config (fresh weights, the training
step, ``fit.find_training_lr``); ``lr_range_test_seeds`` repeats it over seeds for their
spread; ``lr_find`` writes the result as ``cifar-resnet lr-find`` does.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.load import Cifar10, load_cifar10
from ..errors import CheckpointError
from ..records.layout import LR_FIND_FILES, LR_FINDER_JSON, LR_FINDER_PNG, RUN_FILES
from ..records.records import LRFinderResult
from ..records.run_folder import RunFolder
from .fit import find_training_lr
from .lr_finder import with_spread
from .setup import setup_training


def lr_range_test(
    config: TrainConfig, data: Cifar10 | None = None, *, progress: bool = True
) -> LRFinderResult:
    """The LR range test that ``fit`` would run for ``config``, on its own."""
    return find_training_lr(setup_training(config, data, progress), config, progress)


def lr_range_test_seeds(
    config: TrainConfig, data: Cifar10 | None = None, seeds: int = 3, *, progress: bool = True
) -> LRFinderResult:
    """The range test of ``config`` with its spread: the test once for each of ``seeds`` seeds.

    The result is the first seed's (``config.seed``: the choice ``fit`` makes), with
    every seed's LRMAX and their spread (largest / smallest) in ``spread``.
    """
    if data is None:
        data = load_cifar10(config.data_dir, config.cache_dir, progress=progress)
    results = []
    for i in range(seeds):
        if progress and seeds > 1:
            tqdm.write(f"LR range test, seed {config.seed + i} ({i + 1} of {seeds})")
        results.append(lr_range_test(config.replace(seed=config.seed + i), data, progress=progress))
    if seeds == 1:
        return results[0]
    return with_spread(results[0], [config.seed + i for i in range(seeds)], results[1:])


def lr_find(config: TrainConfig, out: str | Path, *, seeds: int = 3, force: bool = False,
            progress: bool = True):  # fmt: skip
    """The range test of ``config`` over ``seeds`` seeds, written to ``out`` (lr_finder.json
    and lr_finder.png, replaced only once the test has run); its result."""
    held = [n for n in RUN_FILES if n not in LR_FIND_FILES and (Path(out) / n).exists()]
    if held:
        raise CheckpointError(
            f"--out {out} holds a training run ({held[0]}); lr-find writes only "
            f"{LR_FINDER_JSON} and {LR_FINDER_PNG} into a folder of its own: choose another --out"
        )
    run = RunFolder(out, force=force, owns=LR_FIND_FILES)
    try:
        result = lr_range_test_seeds(config, seeds=seeds, progress=progress)
        run.write_json(LR_FINDER_JSON, result.to_dict())
        write_lr_finder_png(run, result)
    except BaseException:
        run.abandon()
        raise
    run.close()
    return result


def write_lr_finder_png(run: RunFolder, result: LRFinderResult) -> None:
    """The range test's curve as lr_finder.png in ``run`` (by ``lr-find`` and by ``train``)."""
    from ..plots import figure_png, plot_lr_finder  # matplotlib: only when writing

    run.write_bytes(LR_FINDER_PNG, figure_png(plot_lr_finder(result), dpi=110))
