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
        # Killed between writing last.pt and this log, the checkpoint's epoch has no row yet: take it from the
        # checkpoint, which holds it, so the log stays one row per epoch.
        row = getattr(trainer, "resumed_row", None)
        if (
            row
            and int(float(row.get("epoch", -1))) == trainer.epoch
            and all(r.epoch != trainer.epoch for r in self.records)
        ):
            self.records.append(EpochRecord.from_row(row, str(self.path)))
            if trainer.dist.is_main:
                write_metrics_log(self.path, self.records)

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


class TensorBoardLog(Callback):
    """``RUN/tensorboard/`` (``--tensorboard``): every numeric column of the metrics log as a scalar per epoch
    (``train/…``, ``weight/…``, ``val/…``, ``lr``, ``time/…``) and ``panels`` validation panels (image | direct
    segmentation | direct depth). ``metrics.csv`` stays the source of truth; this is for watching runs, and a
    sweep's runs under one folder compare in one ``tensorboard --logdir OUT``."""

    GROUPS = (("train_", "train/"), ("weight_", "weight/"), ("val_", "val/"))

    def __init__(self, run_dir: Path, panels: int = 3) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - checked before the first epoch
        except ImportError as exc:
            from crosstask_cli.errors import MissingDependencyError

            raise MissingDependencyError(
                "--tensorboard needs the tensorboard package: pip install 'crosstask-cli[tensorboard]'"
            ) from exc
        self.dir, self.panels, self.writer, self.purge_step = run_dir / "tensorboard", panels, None, None

    def on_resume(self, trainer: Trainer) -> None:
        self.purge_step = trainer.epoch + 1  # events an interrupted run wrote after its last checkpoint are dropped

    def _tag(self, key: str) -> str:
        special = {"seconds": "time/epoch_s", "train_seconds": "time/train_s"}
        if key in special:
            return special[key]
        for prefix, group in self.GROUPS:
            if key.startswith(prefix):
                return group + key[len(prefix) :]
        return key

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if not trainer.dist.is_main:
            return
        import math

        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(str(self.dir), purge_step=self.purge_step)
        for key, value in record.to_row().items():
            if key in ("epoch", "step", "val_split", "best") or isinstance(value, str):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(self._tag(key), value, record.epoch)
        try:
            for i, panel in enumerate(validation_panels(trainer, self.panels)):
                self.writer.add_image(f"val/panel_{i}", panel, record.epoch, dataformats="HWC")
        except Exception as exc:  # noqa: BLE001 - a drawing failure must not stop training
            trainer.reporter.message(f"could not draw TensorBoard panels: {exc}")
        self.writer.flush()


def validation_panels(trainer: Trainer, count: int) -> list:
    """The first ``count`` validation images side by side with the model's direct prediction of each task
    (segmentation colours, depth, normals as (n + 1)/2; uint8 H×(1+T)W×3 each)."""
    import numpy as np
    import torch

    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.tasks import get_task

    n = min(count, len(trainer.val_ds))
    if n == 0:
        return []
    images = np.stack([trainer.val_ds.load_sample(i)[0] for i in range(n)])
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(normalise(torch.from_numpy(images)).to(trainer.device), direct_only=True)
    finally:
        model.train(was_training)
    ctx = trainer.meta.context
    panels = []
    for i in range(n):
        tiles = [images[i]]
        for t, value in pred.direct.items():
            spec = get_task(t)
            tiles.append(spec.colorize(spec.as_array(value[i]), ctx))
        panels.append(np.concatenate(tiles, axis=1))
    return panels
