"""Runs as a user starts them: train into a folder and report on it, or resume one.

The rules that the command line, the Python API and the notebook share:

- ``new_run`` / ``resume_run`` decide what a training run is: a new folder (refused if it
  holds a run, unless ``force``), or an interrupted run continued with its own settings
  (only where the data and the device are may change; a run stopped before its first
  checkpoint starts again from its settings).
- ``train_run`` runs it: ``fit`` into the folder, then the report, under the folder's lock;
  a failure after the last checkpoint still says what is saved and how to go on.
- ``run_data``: a saved model is measured on its own run's data unless another is given.

Nothing here prints: callers show ``Plan.message`` and what ``train_run`` returns.
The other writers live beside their stages: ``insight.report.write_report``,
``insight.analysis.analyse_data``, ``training.range_test.lr_find``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files
from .config import RESUME_OVERRIDES, TrainConfig
from .config_file import read_config_file
from .errors import (
    PROG,
    CheckpointError,
    CifarResnetError,
    ConfigError,
    TrainingInterrupted,
    UnexpectedError,
    oneline,
)
from .records.checkpoint import resumed_config
from .records.layout import (
    CHECKPOINT,
    CONFIG_JSON,
    TB_DIR,
    checkpoint_file,
)
from .records.records import RunSettings, TrainState
from .records.replace import settle_replaced
from .records.run_folder import RunFolder, RunRecord


@dataclass(frozen=True)
class Plan:
    """A training run about to start or continue: where, with what, and what to say."""

    out: Path
    config: TrainConfig
    state: TrainState | None = None  # the checkpoint it continues from
    report: bool = True  # build report.html once trained
    force: bool = False  # replace a run already in ``out``
    in_place: bool = False  # continues the folder it was saved in
    message: str = ""  # for the caller to show (where a resumed run resumes)


def new_run(config: TrainConfig, out: str | Path, *, force: bool = False, report: bool = True):
    """A new run of ``config`` in ``out``."""
    return Plan(Path(out), config, report=report, force=force)


def check_resume_overrides(given: Iterable[str]) -> None:
    """ConfigError unless every setting ``given`` is one a resumed run may change."""
    fixed = sorted(name for name in given if name not in RESUME_OVERRIDES)
    if fixed:
        flags = [f"--{name.replace('_', '-')}" for name in fixed]
        raise ConfigError(
            f"--resume continues the run with its saved settings; drop {', '.join(flags)} "
            "(only --data-dir, --cache-dir and --device may change)"
        )


def resume_run(
    path: str | Path,
    *,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    report: bool | None = None,
    force: bool = False,
) -> Plan:
    """The plan that continues the run in ``path`` (a run folder or a checkpoint file).

    ``overrides``: settings given anew, of which only ``RESUME_OVERRIDES`` may be;
    ``report`` None keeps the run's own choice.
    """
    overrides = dict(overrides or {})
    check_resume_overrides(overrides)
    settle_replaced(path)  # a killed --force: its earlier run comes back first
    unstarted = _unstarted(Path(path), out, overrides)
    if unstarted is not None:
        return dataclasses.replace(unstarted, report=_choice(report, unstarted.report))
    record = RunRecord.open(path)
    own = record.folder is not None and (
        record.checkpoint.resolve() == checkpoint_file(record.folder).resolve()
    )  # a run's own last.pt continues in place; any other file would overwrite a later state
    target = _resume_folder(record, out, own, force)
    in_place = own and target.resolve() == record.folder.resolve()
    config = resumed_config(record.state, overrides)
    _check_continues(record, target, config)
    state = record.state
    where = f"step {state.epoch_state['step']} of " if state.epoch_state else ""
    return Plan(
        target, config, state, _choice(report, record.settings().reports), force, in_place,
        f"resuming {target} at {where}epoch {state.epoch + 1} of {config.epochs}",
    )  # fmt: skip


def _choice(given: bool | None, saved: bool) -> bool:
    return saved if given is None else given


def _unstarted(folder: Path, out: str | Path | None, overrides: dict[str, Any]) -> Plan | None:
    """A run folder that stopped before its first checkpoint (killed during the range test
    or epoch 1) starts again from its saved settings; None for any other path.

    LRs its range test found are found again (the test is deterministic on the CPU), so it
    ends as an unbroken run would. Files of the attempt that saved nothing (its
    TensorBoard events) are replaced.
    """
    saved = folder / CONFIG_JSON
    if not folder.is_dir() or checkpoint_file(folder).exists() or not saved.is_file():
        return None
    if out is not None and Path(out).resolve() != folder.resolve():
        raise ConfigError(
            f"{folder} stopped before its first checkpoint, so there is nothing to continue "
            "elsewhere; drop --out to start it again in place"
        )
    values = read_config_file(saved)
    recorded = RunSettings.from_dict(files.read_json(saved))
    if recorded.lr_source == "found":  # found by the range test: found again
        values.pop("max_lr", None)
        values.pop("min_lr", None)
    shutil.rmtree(folder / TB_DIR, ignore_errors=True)
    return Plan(
        folder, TrainConfig(**{**values, **overrides}), None, recorded.reports,
        in_place=True, message=f"resuming {folder} from the start: it stopped before its first "
        "checkpoint",
    )  # fmt: skip


def _resume_folder(record: RunRecord, out: str | Path | None, own: bool, force: bool) -> Path:
    """Where a resumed checkpoint continues: its own run folder, or ``out``."""
    if out is None and not own:
        where = "is not inside a run folder" if record.folder is None else "is not its run's"
        raise ConfigError(
            f"{record.checkpoint} {where} last checkpoint (RUN/{CHECKPOINT}); "
            "pass --out FOLDER to continue it in a new run folder"
        )
    target = Path(out) if out is not None else record.folder
    same = record.folder is not None and target.resolve() == record.folder.resolve()
    if same and not own:
        raise ConfigError(
            f"--out {target} is the run {record.checkpoint} came from; continuing that file "
            "there would overwrite the run's later checkpoint; choose a new folder"
        )
    if force and own and same:
        raise ConfigError("--force with --resume replaces nothing; drop --force")
    return target


def _check_continues(record: RunRecord, target: Path, config: TrainConfig) -> None:
    state = record.state
    if state.epoch >= config.epochs and state.epoch_state is None and record.final():
        raise CheckpointError(
            f"the run in {target} already finished its {config.epochs} epochs; nothing to "
            f"resume (rebuild its report with: {PROG} report {target})"
        )
    if not state.resumable:
        raise CheckpointError(
            f"{record.checkpoint} holds weights but no optimizer, schedule or random states; "
            "it can be evaluated but not resumed"
        )


def train_run(
    plan: Plan,
    *,
    progress: bool = True,
    writer: bool = True,
    on_trained: Callable[[Any], None] | None = None,
) -> Any:
    """Train as ``plan`` says, then build the report under the folder's lock; the History.

    ``writer``: this process writes the folder (under torchrun, rank 0 only).
    ``on_trained(history)`` runs between training and the report (the summary line). A
    failure after the last checkpoint says what is saved and the command that goes on;
    a report that cannot be built leaves the run saved and says how to build it.
    """
    from .training.fit import fit
    from .training.range_test import write_lr_finder_png

    run = None
    if writer:  # the report choice goes into config.json, so --resume remembers it
        run = RunFolder(plan.out, force=plan.force, resume=plan.in_place, report=plan.report)
    try:
        try:
            history = fit(plan.config, run=run, progress=progress, resume=plan.state)
        except TrainingInterrupted:
            raise  # its checkpoint is saved: the folder stays as it is
        except BaseException as e:
            if run is not None:
                run.abandon()
                run = None
            if isinstance(e, Exception) and not isinstance(e, CifarResnetError):
                raise UnexpectedError(e, what_is_saved(plan.out)) from e
            raise
        if run is None:
            return history
        if history.lr_finder is not None:
            write_lr_finder_png(run, history.lr_finder)
        if on_trained is not None:
            on_trained(history)
        if plan.report:
            _report_after_training(plan.out, plan.config, progress)
        return history
    finally:
        if run is not None:
            run.close()


def _report_after_training(out: Path, config: TrainConfig, progress: bool) -> Path:
    """report.html of a run just trained (its folder's lock is held)."""
    from .insight.report import write_report

    how = f"build it with: {PROG} report {out}"
    try:
        return write_report(
            out, config.data_dir, config.cache_dir, config.device, progress=progress, lock=False
        )
    except KeyboardInterrupt:
        raise ReportInterrupted(
            f"interrupted while writing the report; the run is saved; {how}"
        ) from None
    except Exception as e:  # the run itself is saved; the report can be rebuilt
        unexpected = "" if isinstance(e, CifarResnetError) else f"unexpected {type(e).__name__}: "
        raise CifarResnetError(
            f"the run is saved but its report is not ({unexpected}{oneline(e, 240)}); {how}"
        ) from None


class ReportInterrupted(KeyboardInterrupt):
    """Ctrl-C while the report of a finished run was written; the run is saved."""


def what_is_saved(out: Path) -> str:
    """After a failure in training: what its run folder holds and the command that goes on."""
    if not checkpoint_file(out).is_file():
        return ""
    try:
        record = RunRecord.open(out)
        done, epochs = record.state.epoch, record.config.epochs
    except CifarResnetError:
        return ""
    if done >= epochs and record.state.epoch_state is None:
        return (
            f"the run is saved in {out} (all {epochs} epochs); build its report with: "
            f"{PROG} report {out}"
        )
    return f"the run is saved in {out} up to epoch {done}; continue: {PROG} train --resume {out}"


def run_data(
    config: TrainConfig,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = False,
):
    """The data a saved model is measured on: its run's own, unless another copy is given."""
    from .data import load_cifar10

    return load_cifar10(
        data_dir if data_dir is not None else config.data_dir,
        cache_dir if cache_dir is not None else config.cache_dir,
        progress=progress,
    )
