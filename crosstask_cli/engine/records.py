"""Typed records of a run: one :class:`EpochRecord` per epoch, stored as a row of ``RUN/metrics.csv``.

The trainer builds them, the CLI prints them, the curves and ``compare`` read them back: the column names live
here only. Columns: ``epoch, step, lr, train_<loss>…, train_total, weight_<task>…, val_split, val_loss,
val_<loss>…, val_<metric>…, seconds, train_seconds, best``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosstask_cli.errors import InputError
from crosstask_cli.tasks import LEGACY_TASKS, all_specs, get_task

VAL_METRICS = tuple(m for spec in all_specs() for m in spec.logged)  # logged each epoch, for the tasks trained
# what --select-metric may choose: the validation loss or a compared metric of a task (its direction from the spec)
SELECT_DIRECTION = {"loss": "min"} | {
    m: "max" if spec.directions[m] > 0 else "min" for spec in all_specs() for m in spec.compared
}


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


@dataclass
class EpochRecord:
    """What one epoch did. ``train``: mean of each loss component (and ``total``) over its batches; ``weights``:
    task weights after the epoch; ``val``: validation loss (``loss`` = sum of the unweighted task losses), its
    components, metrics and consistency figures on ``val_split``."""

    epoch: int
    step: int
    lr: float
    train: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    val_split: str = "val"
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = math.nan
    train_seconds: float = math.nan
    best: bool = False

    def score(self, metric: str) -> float:
        """The model-selection score (``loss`` or a validation metric); NaN when not logged."""
        return _number(self.val.get(metric))

    def is_better(self, metric: str, than: float | None) -> bool:
        a = self.score(metric)
        if than is None or math.isnan(than):
            return not math.isnan(a)
        return a < than if SELECT_DIRECTION[metric] == "min" else a > than

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "lr": self.lr}
        row.update({f"train_{k}": v for k, v in self.train.items()})
        row.update({f"weight_{k}": v for k, v in self.weights.items()})
        row["val_split"] = self.val_split
        row.update({f"val_{k}": v for k, v in self.val.items()})
        row.update(seconds=self.seconds, train_seconds=self.train_seconds, best=int(self.best))
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any], where: str = "metrics.csv") -> EpochRecord:
        """Parse a metrics-log row (strings from CSV, or numbers); a row without an epoch is an InputError."""
        try:
            epoch = int(float(row["epoch"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: not a crosstask metrics log (a row has no valid 'epoch' column)") from None
        try:
            return cls._from_valid_row(row, epoch)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{where}: not a crosstask metrics log (epoch {epoch}: a value is not a number: {exc})"
            ) from None

    @classmethod
    def _from_valid_row(cls, row: Mapping[str, Any], epoch: int) -> EpochRecord:
        step = _number(row.get("step", 0))
        rec = cls(epoch=epoch, step=int(step) if math.isfinite(step) else 0, lr=_number(row.get("lr")))
        for key, value in row.items():
            if key.startswith("train_") and key != "train_seconds":
                rec.train[key[6:]] = _number(value)
            elif key.startswith("weight_"):
                rec.weights[key[7:]] = _number(value)
            elif key == "val_split":
                rec.val_split = str(value or "val")
            elif key.startswith("val_"):
                rec.val[key[4:]] = _number(value)
        rec.seconds = _number(row.get("seconds"))
        rec.train_seconds = _number(row.get("train_seconds"))
        rec.best = bool(_number(row.get("best", 0)) or 0)
        return rec


def read_metrics_log(path: Path, max_epoch: int | None = None) -> list[EpochRecord]:
    """The records of ``metrics.csv`` (up to ``max_epoch``); a file that is not a metrics log is an InputError."""
    import csv

    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the metrics log ({exc})") from exc
    records = [EpochRecord.from_row(r, str(path)) for r in rows]
    return [r for r in records if max_epoch is None or r.epoch <= max_epoch]


def write_metrics_log(path: Path, records: list[EpochRecord]) -> None:
    """Write ``metrics.csv`` atomically, one row per record; columns are the union, in first-seen order."""
    import pandas as pd

    from crosstask_cli.atomic import atomic_write_text

    buf = io.StringIO()
    pd.DataFrame([r.to_row() for r in records]).to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


@dataclass
class EvalResult:
    """One evaluation: what ``crosstask eval --json`` writes (ratios in [0, 1], depth in the dataset's units, angles
    in degrees).

    ``metrics``: each evaluated task's metrics by task name (``seg``: miou, pixel_acc, per_class_iou {name: iou};
    ``depth``: abs_err, rel_err, … (see ``metrics.DepthMetrics``); ``normal``: mean_angle, median_angle,
    within_11_25, …), written under the task's ``result_key`` (``segmentation``, ``depth``, ``normal``);
    ``segmentation`` and ``depth`` are always written (the original's keys; empty or NaN for a task not
    predicted). ``consistency`` (models with TaskTransferNets): each pair's agreement (seg_agreement, depth_gap,
    …); ``loss``: mean loss components when a loss function was given; ``checkpoint``/``data``: where it came from;
    ``precision``: of the model's forward pass (off = fp32, bf16, fp16); ``tasks``: the tasks scored when prediction
    files hold only some; ``cityscapes``: ``eval --full-resolution``'s official scores.
    """

    protocol: str
    split: str
    num_images: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: str | None = None
    depth_kind: str | None = None
    consistency: dict[str, float] | None = None
    loss: dict[str, float] | None = None
    checkpoint: str | None = None
    data: str | None = None
    precision: str | None = None  # the model's forward pass: off (fp32), bf16 or fp16; metrics are always fp32
    tasks: list[str] | None = None  # the tasks scored, when not all (prediction files of some tasks)
    cityscapes: dict[str, Any] | None = None  # eval --full-resolution: the official evaluator's scores
    energy: dict[str, Any] | None = None  # the consistency energy report (energy.ConsistencyReport)
    corruption: dict[str, Any] | None = None  # eval --corrupt: the corruption, clean scores, AUROC

    KEYS = ("protocol", "split", "num_images", "dataset", "depth_kind")
    OPTIONAL = ("consistency", "loss", "checkpoint", "data", "precision", "tasks", "cityscapes", "energy", "corruption")

    @property
    def segmentation(self) -> dict[str, Any]:
        return self.metrics.setdefault("seg", {})

    @segmentation.setter
    def segmentation(self, value: dict[str, Any]) -> None:
        self.metrics["seg"] = value

    @property
    def depth(self) -> dict[str, Any]:
        return self.metrics.setdefault("depth", {})

    @depth.setter
    def depth(self, value: dict[str, Any]) -> None:
        self.metrics["depth"] = value

    def flat_metrics(self) -> dict[str, Any]:
        """Every task's metrics in one dict (metric names are unique across tasks)."""
        return {k: v for values in self.metrics.values() for k, v in values.items()}

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.KEYS}
        for spec in all_specs():
            if spec.name in LEGACY_TASKS or spec.name in self.metrics:
                d[spec.result_key] = self.metrics.get(spec.name, {})
        d.update({k: getattr(self, k) for k in self.OPTIONAL if getattr(self, k) is not None})
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "eval.json") -> EvalResult:
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("segmentation"), dict)
            or not isinstance(d.get("depth"), dict)
        ):
            raise InputError(f"{where}: not an evaluation result (needs 'segmentation' and 'depth')")
        metrics = {}
        for spec in all_specs():
            value = d.get(spec.result_key)
            if value is not None and not isinstance(value, dict):
                raise InputError(f"{where}: '{spec.result_key}' must be an object of metrics")
            if value is not None:
                metrics[spec.name] = value
        return cls(
            protocol=str(d.get("protocol", "standard")),
            split=str(d.get("split", "val")),
            num_images=int(d.get("num_images", 0) or 0),
            metrics=metrics,
            dataset=d.get("dataset"),
            depth_kind=d.get("depth_kind"),
            consistency=d.get("consistency"),
            loss=d.get("loss"),
            checkpoint=d.get("checkpoint"),
            data=d.get("data"),
            precision=d.get("precision"),
            tasks=d.get("tasks"),
            cityscapes=d.get("cityscapes"),
            energy=d.get("energy"),
            corruption=d.get("corruption"),
        )


def task_of_metric(metric: str) -> str | None:
    """The task that reports ``metric`` (None for a name no task reports)."""
    return next((s.name for s in all_specs() if metric in s.directions), None)


def metric_direction(metric: str) -> int:
    """+1 when a higher ``metric`` is better, −1 when lower is (ConfigError-free: unknown names give 0)."""
    task = task_of_metric(metric)
    return 0 if task is None else get_task(task).directions[metric]
