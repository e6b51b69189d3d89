"""Evaluation of a model (or of prediction files) on a prepared split, with both metric protocols, for any tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from crosstask_cli.data.dataset import PreparedDataset
from crosstask_cli.data.labels import IGNORE_INDEX
from crosstask_cli.data.prepared import DatasetError, DatasetMeta, open_split, read_meta, verify_split
from crosstask_cli.engine.device import autocast, memory_format, resolve_amp
from crosstask_cli.engine.records import EvalResult
from crosstask_cli.errors import ConfigError
from crosstask_cli.metrics import PROTOCOLS, OriginalProtocolMetrics
from crosstask_cli.objective import CrossTaskLoss
from crosstask_cli.tasks import (
    LEGACY_TASKS,
    TaskContext,
    agreement_name,
    default_pairs,
    get_task,
    ordered,
    transfer_order,
)


class PairAgreement:
    """How well the transferred predictions agree with the direct ones (the method's own quantity), per pair
    (source → target): the target task's agreement figure (seg_agreement: share of labelled pixels where
    argmax(direct) == argmax(transferred); depth_gap: mean |direct − transferred| over valid depth pixels, dataset
    units; normal_gap: mean angle between them over valid normal pixels, degrees). Accumulated on the device."""

    def __init__(self, ctx: TaskContext, pairs=(("seg", "depth"), ("depth", "seg"))) -> None:
        self.ctx = ctx
        self.pairs = transfer_order(pairs)
        self.sums = torch.zeros(2 * len(self.pairs), dtype=torch.float64)  # numerator, count per pair

    @torch.no_grad()
    def update(self, seg, seg_from_depth, depth, depth_from_seg, seg_target, depth_target) -> None:
        """The original's two pairs, from their tensors (see :meth:`update_pairs`)."""
        self.update_pairs({"seg": seg, "depth": depth}, {("depth", "seg"): seg_from_depth,
                          ("seg", "depth"): depth_from_seg}, {"seg": seg_target, "depth": depth_target})  # fmt: skip

    @torch.no_grad()
    def update_pairs(self, direct: Mapping, transferred: Mapping, targets: Mapping) -> None:
        rows = []
        for s, t in self.pairs:
            if (s, t) in transferred and t in targets:
                rows.append(get_task(t).agreement_sums(direct[t], transferred[(s, t)], targets[t], self.ctx))
            else:
                rows.append(torch.zeros(2, dtype=torch.float64, device=next(iter(targets.values())).device))
        row = torch.cat(rows)
        if self.sums.device != row.device:
            self.sums = self.sums.to(row.device)
        self.sums += row

    def compute(self) -> dict[str, float]:
        values = self.sums.tolist()
        return {
            agreement_name(s, t): values[2 * i] / values[2 * i + 1] if values[2 * i + 1] else float("nan")
            for i, (s, t) in enumerate(self.pairs)
        }


class MetricSet:
    """The accumulators of one evaluation, fed together; ``result(protocol)`` builds the EvalResult.

    ``tasks``: the tasks evaluated (seg and depth by default); ``protocols``: which protocols' accumulators to
    feed (the per-image ones of ``original`` are only kept when asked for; the confusion matrix and pooled depth
    sums always are: both protocols report per-class IoU, and the ``original`` depth averages are built from the
    same per-batch sums). ``pairs``: the TaskTransferNets whose agreement ``consistency`` accumulates.
    """

    def __init__(
        self,
        num_classes: int,
        protocols: tuple[str, ...] = PROTOCOLS,
        ignore_index: int = IGNORE_INDEX,
        class_names: list[str] | None = None,
        dataset: str | None = None,
        depth_kind: str | None = None,
        tasks: tuple[str, ...] = LEGACY_TASKS,
        pairs: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {sorted(unknown)}")
        self.dataset, self.depth_kind = dataset, depth_kind
        self.protocols = tuple(protocols)
        self.tasks = ordered(tasks)
        self.ctx = TaskContext(num_classes, ignore_index, tuple(class_names or ()), (), depth_kind or "metric")
        # seg and depth share the original protocol's sums, as the reference implementation computes them together
        self.original = OriginalProtocolMetrics(num_classes, ignore_index)
        self.task_metrics = {t: get_task(t).metrics(self.protocols, self.ctx, self.original) for t in self.tasks}
        self.consistency = PairAgreement(self.ctx, pairs if pairs is not None else default_pairs(self.tasks))
        self.has_consistency = False
        self.images = 0

    @classmethod
    def for_dataset(
        cls, meta: DatasetMeta, protocols: tuple[str, ...] = PROTOCOLS, tasks=None, pairs=None
    ) -> MetricSet:
        return cls(meta.num_classes, protocols, meta.ignore_index, meta.class_names, meta.dataset, meta.depth_kind,
                   tasks if tasks is not None else meta.tasks, pairs)  # fmt: skip

    @property
    def cm(self):
        return self.task_metrics["seg"].cm

    @property
    def depth(self):
        return self.task_metrics["depth"].pooled

    def update(self, *args) -> None:
        """``update(preds, targets)`` with {task: tensor} dicts, or the original's
        ``update(seg_pred, seg_target, depth_pred, depth_target)``. A prediction may be missing (None) for a task a
        model does not predict (its metrics stay NaN)."""
        if len(args) == 4:
            preds, targets = {"seg": args[0], "depth": args[2]}, {"seg": args[1], "depth": args[3]}
        elif len(args) == 2:
            preds, targets = args
        else:
            raise TypeError(
                "MetricSet.update(preds, targets) or update(seg_pred, seg_target, depth_pred, depth_target)"
            )
        for t, metrics in self.task_metrics.items():
            if preds.get(t) is not None:
                metrics.update(preds[t], targets[t])
        self.images += next(v for v in targets.values() if v is not None).shape[0]

    def reduce(self, dist, device: torch.device) -> None:
        """Sum every accumulator over the processes of a distributed run (each evaluated a shard)."""
        from crosstask_cli.engine.distributed import all_reduce_sum_

        parts = [part for m in self.task_metrics.values() for part in m.state()]
        parts += [self.consistency.sums, torch.tensor([self.images, float(self.has_consistency)], dtype=torch.float64)]
        flat = all_reduce_sum_(torch.cat([t.to(device).flatten().double() for t in parts]), dist).cpu()
        pieces = list(torch.split(flat, [t.numel() for t in parts]))
        pieces = [x.view_as(t) if t.ndim > 1 else x for x, t in zip(pieces, parts, strict=True)]
        for m in self.task_metrics.values():
            n = len(m.state())
            m.load_state(pieces[:n])
            pieces = pieces[n:]
        self.consistency.sums = pieces[0].clone()
        images, has_c = pieces[1].tolist()
        self.images, self.has_consistency = int(images), has_c > 0

    def result(self, protocol: str, split: str) -> EvalResult:
        if protocol not in self.protocols:
            raise ConfigError(f"protocol must be one of {self.protocols} (those this MetricSet kept), got {protocol!r}")
        metrics = {t: m.compute(protocol) for t, m in self.task_metrics.items()}
        for t in LEGACY_TASKS:  # seg and depth are always reported (NaN for a task not evaluated), as before
            metrics.setdefault(t, get_task(t).empty_metrics(protocol, self.ctx))
        return EvalResult(
            protocol=protocol,
            split=split,
            num_images=self.images,
            metrics={t: metrics[t] for t in ordered(metrics)},
            dataset=self.dataset,
            depth_kind=self.depth_kind,
            consistency=self.consistency.compute() if self.has_consistency else None,
        )


def evaluation_tasks(model: torch.nn.Module, meta: DatasetMeta) -> tuple[str, ...]:
    """The tasks a model is evaluated on: those it predicts whose targets the dataset has."""
    tasks = tuple(t for t in model.config.tasks if t in meta.tasks)
    if not tasks:
        raise DatasetError(
            f"the model predicts {', '.join(model.config.tasks)}, the dataset holds targets of "
            f"{', '.join(meta.tasks)}: nothing to evaluate"
        )
    return tasks


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`evaluate` runs: batch size, device, metric protocol, at most ``max_batches`` batches,
    ``consistency`` (the direct-vs-transferred agreement), precision (``amp``), DataLoader ``workers``, and
    ``energy`` (the consistency-energy report)."""

    batch_size: int = 8
    device: str | torch.device = "cpu"
    protocol: str = "standard"
    max_batches: int | None = None
    consistency: bool = True
    amp: bool | str = False
    workers: int = 0
    energy: bool = False


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: str | Path | PreparedDataset,
    split: str = "val",
    settings: EvalSettings | None = None,
    *,
    loss_fn: CrossTaskLoss | None = None,
    progress: Callable[[int], None] | None = None,
    dist=None,
    corrupt: Callable[[np.ndarray, int], np.ndarray] | None = None,
    **overrides,
) -> EvalResult:
    """Evaluate ``model`` on a prepared split; returns an :class:`EvalResult` (``.to_dict()`` is the ``eval --json`` content).

    ``settings`` (or its fields as keywords: ``batch_size=4, protocol="original", energy=True, …``). Every task the
    model predicts and the dataset has targets of is scored (``result.tasks`` lists them when some of the model's
    tasks are not). With ``loss_fn`` the mean of each loss component over batches is added under ``"loss"``; with
    ``consistency`` the agreement of direct and transferred predictions under ``"consistency"``. With a distributed
    ``dist`` each process evaluates every world_size-th image and the metrics are summed. With ``energy`` (a model
    with TaskTransferNets, not distributed) the consistency-energy report under ``"energy"``
    (:class:`~crosstask_cli.energy.ConsistencyReport`); ``corrupt`` corrupts each uint8 image before it is
    normalised (:class:`~crosstask_cli.data.corruptions.Corruption`). ``progress(n)`` after each batch of n images.
    """
    o = dataclasses.replace(settings or EvalSettings(), **overrides)
    device = torch.device(o.device)
    ds, tasks = _dataset_for(model, data, split)
    if corrupt is not None:
        ds.corrupt = corrupt
    pairs = tuple(p for p in getattr(getattr(model, "config", None), "pairs", ()) if set(p) <= set(tasks))
    report = _energy_report(ds, pairs, dist) if o.energy else None
    indices = range(len(ds) if o.max_batches is None else min(len(ds), o.max_batches * o.batch_size))
    if dist is not None and dist.enabled:
        indices = indices[dist.rank :: dist.world_size]
    subset = ds if len(indices) == len(ds) else Subset(ds, indices)
    loader = DataLoader(subset, batch_size=o.batch_size, shuffle=False, num_workers=o.workers,
                        pin_memory=device.type == "cuda")  # fmt: skip
    metrics = MetricSet.for_dataset(ds.meta, (o.protocol,), tasks, pairs)
    precision = resolve_amp(o.amp, device)
    losses = _LossSums(loss_fn, device)
    was_training = model.training
    fmt = memory_format(device)
    model.to(memory_format=fmt)
    model.eval()
    try:
        for images, targets, _ in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
            targets = {t: v.to(device, non_blocking=True) for t, v in targets.items()}
            with autocast(device, precision):
                pred = model(images, direct_only=not (o.consistency or loss_fn is not None or o.energy))
            pred = pred.map(lambda t: t.float())
            metrics.update(pred.direct, targets)
            if o.consistency and pred.transferred:
                metrics.consistency.update_pairs(pred.direct, pred.transferred, targets)
                metrics.has_consistency = True
            if report is not None:
                report.update(pred, targets)
            losses.add(pred, targets)
            if progress:
                progress(images.shape[0])
    finally:
        model.train(was_training)
    if dist is not None and dist.enabled:
        metrics.reduce(dist, device)
        losses.reduce(dist)
    out = metrics.result(o.protocol, ds.split_name)
    out.precision = precision
    if set(tasks) != set(getattr(getattr(model, "config", None), "tasks", tasks)):
        out.tasks = list(tasks)
    if report is not None:
        out.energy = report.compute()
    out.loss = losses.means()
    return out


def _dataset_for(model, data, split: str) -> tuple[PreparedDataset, tuple[str, ...]]:
    """The split to evaluate on and the tasks scored (those the model predicts and the data has targets of)."""
    if isinstance(data, PreparedDataset):
        tasks = evaluation_tasks(model, data.meta) if hasattr(model, "config") else data.tasks
        lacking = [t for t in tasks if t not in data.tasks]
        if lacking:
            raise DatasetError(f"{data.root}: the dataset given was opened without the {', '.join(lacking)} targets")
        return data, tasks
    meta = read_meta(Path(data))
    tasks = evaluation_tasks(model, meta) if hasattr(model, "config") else meta.tasks
    return PreparedDataset(data, split, augment=False, tasks=tasks), tasks


def _energy_report(ds: PreparedDataset, pairs, dist):
    from crosstask_cli.energy import NEEDS_BOTH, ConsistencyReport

    if not pairs:
        raise ConfigError(NEEDS_BOTH)
    if dist is not None and dist.enabled:
        raise ConfigError("the consistency-energy report is computed in one process, not under torchrun")
    m = ds.meta
    return ConsistencyReport(m.num_classes, m.ignore_index, m.class_names, pairs=pairs, depth_kind=m.depth_kind)


class _LossSums:
    """The sums of every loss component over an evaluation's batches, kept on the device (one host read at the end);
    a fixed vector, so that every process of a distributed run reduces the same one."""

    def __init__(self, loss_fn: CrossTaskLoss | None, device: torch.device) -> None:
        self.loss_fn, self.device = loss_fn, device
        self.keys = list(loss_fn.names) if loss_fn is not None else []
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.batches = 0

    def add(self, pred, targets) -> None:
        if self.loss_fn is None:
            return
        losses = self.loss_fn(pred, targets)
        self.sums += torch.stack([losses[k].detach().double() for k in self.keys])
        self.batches += 1

    def reduce(self, dist) -> None:
        if self.loss_fn is None:
            return
        from crosstask_cli.engine.distributed import all_reduce_sum_

        count = torch.tensor([float(self.batches)], dtype=torch.float64, device=self.device)
        packed = all_reduce_sum_(torch.cat([self.sums, count]), dist)
        self.sums, self.batches = packed[:-1], int(packed[-1].item())

    def means(self) -> dict[str, float] | None:
        if self.loss_fn is None:
            return None
        return {k: v / max(self.batches, 1) for k, v in zip(self.keys, self.sums.tolist(), strict=True)}


def evaluate_predictions(
    pred_dir: str | Path,
    data: str | Path,
    split: str = "val",
    protocol: str = "standard",
    batch_size: int = 8,
    verify: bool = False,
) -> EvalResult:
    """Evaluate prediction files against a prepared split: a ``crosstask predict`` output in either format (see
    :func:`~crosstask_cli.predictions.match_predictions` for how files are found), or a flat folder of
    ``<id>_seg.png`` / ``<id>_depth.npy`` / ``<id>_normal.npy``. Only the tasks whose files are present are scored
    (``result.tasks``); a predicted class id outside the dataset's classes (e.g. 255, or a labelId the dataset does
    not evaluate) is a miss (``segmentation.missed_pixels``); non-finite depth or normals are an error naming the
    file. ``verify`` checks every value of the split first (else a sample)."""
    from crosstask_cli.data.labels import cityscapes_lookup, has_cityscapes_labels
    from crosstask_cli.predictions import match_predictions, read_seg_prediction

    pred_dir, data = Path(pred_dir), Path(data)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: not a directory of predictions")
    meta = read_meta(data)
    s = open_split(data, split)
    verify_split(s, meta, full=verify)
    files = match_predictions(pred_dir, list(s.files), {t: get_task(t).file_suffixes()[0] for t in meta.tasks})
    lookup = None
    if files.format == "cityscapes":
        if not has_cityscapes_labels(meta.dataset, meta.num_classes):
            raise DatasetError(
                f"{pred_dir}: holds Cityscapes labelIds, but {data} is {meta.dataset} with {meta.num_classes} classes"
            )
        lookup = cityscapes_lookup(meta.num_classes, meta.categories or "original")
    tasks = ordered(files.tasks)
    metrics = MetricSet.for_dataset(meta, (protocol,), tasks)
    h, w = meta.height, meta.width
    for start in range(0, len(s), batch_size):
        ids = s.files[start : start + batch_size]
        stop = start + len(ids)
        preds, targets = {}, {}
        for t in tasks:
            spec = get_task(t)
            targets[t] = torch.stack([spec.target_tensor(np.array(a)) for a in s.targets[t][start:stop]])
            if t == "seg":
                arrays = [read_seg_prediction(files.seg[i], files.format, lookup, h, w).astype(np.int64) for i in ids]
            else:
                arrays = [spec.read_prediction(files.files[t][i], h, w) for i in ids]
            preds[t] = torch.stack([spec.target_tensor(a) for a in arrays])  # a prediction file has its target's layout
        metrics.update(preds, targets)
    result = metrics.result(protocol, split)
    if set(tasks) != set(LEGACY_TASKS):  # not the original's pair: say which were scored (the others not, not NaN)
        result.tasks = list(tasks)
        result.metrics = {t: v for t, v in result.metrics.items() if t in tasks}
    return result


def evaluate_corruption(
    model: torch.nn.Module,
    data: str | Path,
    corruption,
    split: str = "val",
    progress: Callable[[int], None] | None = None,
    **kwargs,
) -> EvalResult:
    """The out-of-distribution check: evaluate the split clean and with ``corruption`` applied (each with the
    energy report), and measure how well per-image energy separates corrupted from clean images (AUROC, 0.5 =
    not at all, 1 = perfectly). Returns the corrupted evaluation; ``.corruption`` holds the corruption, the clean
    and corrupted summaries and the AUROCs. ``kwargs`` go to :func:`evaluate`."""
    from crosstask_cli.energy import auroc

    clean = evaluate(model, data, split, energy=True, progress=progress, **kwargs)
    bad = evaluate(model, data, split, energy=True, corrupt=corruption, progress=progress, **kwargs)

    def summary(r: EvalResult) -> dict:
        flat = r.flat_metrics()
        compared = {k: flat.get(k) for t in ordered(r.metrics) for k in get_task(t).compared if k in flat}
        return {**compared, "energy": r.energy["mean"]}

    bad.corruption = {
        "kind": corruption.kind,
        "severity": corruption.severity,
        "clean": summary(clean),
        "corrupted": summary(bad),
        "auroc": {
            k: auroc(clean.energy["per_image"][k], bad.energy["per_image"][k])
            for k in ("combined", *(k for k in clean.energy["per_image"] if k != "combined"))
        },  # fmt: skip
    }
    return bad
