"""Training events and what happens on them: progress reporting, best-epoch selection, checkpoints, the metrics
log and the training curves. The loop (:mod:`crosstask_cli.engine.trainer`) only emits the events."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crosstask_cli.engine import rundir
from crosstask_cli.engine.checkpoint import save_checkpoint
from crosstask_cli.engine.records import EpochRecord, read_metrics_log, write_metrics_log
from crosstask_cli.engine.state import checkpoint_payload, without_resume_state

if TYPE_CHECKING:
    from crosstask_cli.engine.trainer import Trainer


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_score: float | None
    last: EpochRecord | None


class TrainReporter:
    """Receives progress events; the default does nothing. The CLI subclasses it with Rich output."""

    def start(self, info: dict) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, loss: float | None) -> None: ...
    def eval_start(self, split: str, images: int) -> None: ...
    def eval_advance(self, n: int) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self, result: TrainResult) -> None: ...


class Callback:
    """Hooks run by the trainer on every process; most act on the main process only."""

    def on_resume(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None: ...


class BestEpochSelection(Callback):
    """Marks the record whose selection score (``--select-metric``) is the best so far."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        record.best = record.is_better(self.metric, self.best_score)
        if record.best:
            self.best_score, self.best_epoch = record.score(self.metric), record.epoch


class MetricsLog(Callback):
    """``RUN/metrics.csv``: every record so far, rewritten atomically after each epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[EpochRecord] = []

    def on_resume(self, trainer: Trainer) -> None:
        self.records = read_metrics_log(self.path, trainer.epoch) if self.path.is_file() else []

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.records.append(record)
        if trainer.dist.is_main:
            write_metrics_log(self.path, self.records)


class Checkpointing(Callback):
    """``checkpoints/best.pt`` when the record is the best so far, ``last.pt`` (resumable) after every epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.last, self.best = run_dir / rundir.LAST, run_dir / rundir.BEST

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if not trainer.dist.is_main:
            return
        payload = checkpoint_payload(trainer, record.to_row())
        if record.best:
            save_checkpoint(self.best, without_resume_state(payload))
        save_checkpoint(self.last, payload)


class TrainingCurves(Callback):
    """``RUN/plots/{losses,metrics}.png``; a plotting failure is reported, never fatal."""

    def __init__(self, run_dir: Path, log: MetricsLog) -> None:
        self.out, self.log = run_dir / rundir.PLOTS, log

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if not trainer.dist.is_main:
            return
        try:
            from crosstask_cli.engine.curves import plot_training_curves

            plot_training_curves(self.log.records, self.out)
        except Exception as exc:  # noqa: BLE001 - a plotting failure must not stop training
            trainer.reporter.message(f"could not draw training curves: {exc}")
