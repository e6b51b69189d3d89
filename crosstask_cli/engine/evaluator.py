"""Evaluation of a model (or of prediction files) on a prepared split, with both metric protocols."""

from __future__ import annotations

from collections.abc import Callable
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
from crosstask_cli.losses import LOSS_NAMES, CrossTaskLoss
from crosstask_cli.metrics import (
    PROTOCOLS,
    ConfusionMatrix,
    ConsistencyMetrics,
    DepthMetrics,
    OriginalProtocolMetrics,
)
from crosstask_cli.ops import class_labels


class MetricSet:
    """The accumulators of one evaluation, fed together; ``result(protocol)`` builds the JSON dict.

    ``protocols``: which protocols' accumulators to feed (the per-image ones of ``original`` are only kept when
    asked for). The confusion matrix and depth sums are always kept: both protocols report per-class IoU, and the
    ``original`` depth averages are built from the same per-batch sums.
    """

    def __init__(
        self,
        num_classes: int,
        protocols: tuple[str, ...] = PROTOCOLS,
        ignore_index: int = IGNORE_INDEX,
        class_names: list[str] | None = None,
        dataset: str | None = None,
        depth_kind: str | None = None,
    ) -> None:
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {sorted(unknown)}")
        self.dataset, self.depth_kind = dataset, depth_kind
        self.protocols = tuple(protocols)
        self.cm = ConfusionMatrix(num_classes, ignore_index, class_names)
        self.depth = DepthMetrics()
        self.original = OriginalProtocolMetrics(num_classes, ignore_index)
        self.consistency = ConsistencyMetrics(ignore_index)
        self.has_consistency = False
        self.images = 0

    @classmethod
    def for_dataset(cls, meta: DatasetMeta, protocols: tuple[str, ...] = PROTOCOLS) -> MetricSet:
        return cls(meta.num_classes, protocols, meta.ignore_index, meta.class_names, meta.dataset, meta.depth_kind)

    def update(self, seg_pred, seg_target, depth_pred, depth_target) -> None:
        """Predictions may be None for a task a single-task model does not have (its metrics stay NaN)."""
        original = "original" in self.protocols
        if seg_pred is not None:
            if original and seg_pred.ndim == seg_target.ndim + 1:
                seg_pred = class_labels(seg_pred)  # once for both accumulators
            self.cm.update(seg_pred, seg_target)  # from logits it needs no range clamp
            if original:
                self.original.update(seg_pred, seg_target, None, depth_target)
        if depth_pred is not None:
            sums = self.depth.update(depth_pred, depth_target)
            if original:
                self.original.add_depth_sums(sums, depth_target.shape[0])
        self.images += seg_target.shape[0]

    def reduce(self, dist, device: torch.device) -> None:
        """Sum every accumulator over the processes of a distributed run (each evaluated a shard)."""
        from crosstask_cli.engine.distributed import all_reduce_sum_

        self.cm.check_targets()
        o = self.original
        scalars = torch.tensor([o.images, self.images, float(self.has_consistency)], dtype=torch.float64)
        parts = [self.cm.matrix.double(), self.cm.misses.double(), self.depth.sums, self.consistency.sums, o.sums]
        parts.append(scalars)
        flat = all_reduce_sum_(torch.cat([t.to(device).flatten() for t in parts]), dist).cpu()
        sizes = [t.numel() for t in parts]
        cm, misses, depth, cons, orig, sc = torch.split(flat, sizes)
        self.cm.matrix = cm.round().long().view_as(self.cm.matrix)
        self.cm.misses = misses.round().long()
        self.depth.sums, self.consistency.sums, o.sums = depth.clone(), cons.clone(), orig.clone()
        images_o, images, has_c = sc.tolist()
        o.images, self.images, self.has_consistency = int(images_o), int(images), has_c > 0

    def result(self, protocol: str, split: str) -> EvalResult:
        if protocol not in self.protocols:
            raise ConfigError(f"protocol must be one of {self.protocols} (those this MetricSet kept), got {protocol!r}")
        seg = self.cm.compute()
        depth = self.depth.compute()
        if protocol == "original":
            o = self.original.compute()
            seg = {**seg, "miou": o["miou"], "pixel_acc": o["pixel_acc"]}
            depth = {"abs_err": o["abs_err"], "rel_err": o["rel_err"]}
        return EvalResult(
            protocol=protocol,
            split=split,
            num_images=self.images,
            dataset=self.dataset,
            depth_kind=self.depth_kind,
            segmentation=seg,
            depth=depth,
            consistency=self.consistency.compute() if self.has_consistency else None,
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: str | Path | PreparedDataset,
    split: str = "val",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    protocol: str = "standard",
    loss_fn: CrossTaskLoss | None = None,
    max_batches: int | None = None,
    consistency: bool = True,
    amp: bool | str = False,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    dist=None,
    energy: bool = False,
    corrupt: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> EvalResult:
    """Evaluate ``model`` on a prepared split; returns an :class:`EvalResult` (``.to_dict()`` is the ``eval --json`` content).

    With ``loss_fn`` the mean of each loss component over batches is added under ``"loss"``; with
    ``consistency`` the agreement of direct and transferred predictions under ``"consistency"``. With a
    distributed ``dist`` each process evaluates every world_size-th image and the metrics are summed. With
    ``energy`` (a model with TaskTransferNets, not distributed) the consistency-energy report under ``"energy"``
    (:class:`~crosstask_cli.energy.ConsistencyReport`); ``corrupt`` corrupts each uint8 image before it is
    normalised (:class:`~crosstask_cli.data.corruptions.Corruption`).
    """
    device = torch.device(device)
    precision = resolve_amp(amp, device)
    ds = data if isinstance(data, PreparedDataset) else PreparedDataset(data, split, augment=False)
    if corrupt is not None:
        ds.corrupt = corrupt
    report = None
    if energy:
        from crosstask_cli.energy import NEEDS_BOTH, ConsistencyReport

        if not getattr(model, "config", None) or not model.config.has_transfer:
            raise ConfigError(NEEDS_BOTH)
        if dist is not None and dist.enabled:
            raise ConfigError("the consistency-energy report is computed in one process, not under torchrun")
        report = ConsistencyReport(ds.meta.num_classes, ds.meta.ignore_index, ds.meta.class_names)
    indices = range(len(ds) if max_batches is None else min(len(ds), max_batches * batch_size))
    if dist is not None and dist.enabled:
        indices = indices[dist.rank :: dist.world_size]
    subset = ds if len(indices) == len(ds) else Subset(ds, indices)
    loader = DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda"
    )
    metrics = MetricSet.for_dataset(ds.meta, (protocol,))
    need_transfer = consistency or loss_fn is not None or energy
    loss_sums: torch.Tensor | None = None  # summed on the device: one host sync at the end, not one per batch
    loss_keys = list(LOSS_NAMES)  # fixed, so every process reduces the same vector
    batches = 0
    was_training = model.training
    fmt = memory_format(device)
    model.to(memory_format=fmt)
    model.eval()
    try:
        for images, seg_t, depth_t, _ in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
            seg_t = seg_t.to(device, non_blocking=True)
            depth_t = depth_t.to(device, non_blocking=True)
            with autocast(device, precision):
                pred = model(images, direct_only=not need_transfer)
            pred = type(pred)(*(None if t is None else t.float() for t in pred))
            metrics.update(pred.seg, seg_t, pred.depth, depth_t)
            if consistency and pred.seg_from_depth is not None:
                metrics.consistency.update(
                    pred.seg, pred.seg_from_depth, pred.depth, pred.depth_from_seg, seg_t, depth_t
                )
                metrics.has_consistency = True
            if report is not None:
                report.update(pred, seg_t, depth_t)
            if loss_fn is not None:
                losses = loss_fn(pred, seg_t, depth_t)
                row = torch.stack([losses[k].detach().double() for k in loss_keys])
                loss_sums = row if loss_sums is None else loss_sums + row
            batches += 1
            if progress:
                progress(images.shape[0])
    finally:
        model.train(was_training)
    if dist is not None and dist.enabled:
        metrics.reduce(dist, device)
        if loss_fn is not None:
            from crosstask_cli.engine.distributed import all_reduce_sum_

            local = (
                loss_sums if loss_sums is not None else torch.zeros(len(loss_keys), dtype=torch.float64, device=device)
            )
            packed = all_reduce_sum_(
                torch.cat([local, torch.tensor([float(batches)], dtype=torch.float64, device=device)]), dist
            )
            loss_sums, batches = packed[:-1], int(packed[-1].item())
    out = metrics.result(protocol, ds.split_name)
    out.precision = precision
    if report is not None:
        out.energy = report.compute()
    if loss_fn is not None:
        sums = loss_sums.tolist() if loss_sums is not None else [0.0] * len(loss_keys)
        out.loss = {k: v / max(batches, 1) for k, v in zip(loss_keys, sums, strict=True)}
    return out


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
    ``<id>_seg.png`` / ``<id>_depth.npy``. Only the tasks whose files are present are scored (``result.tasks``);
    a predicted class id outside the dataset's classes (e.g. 255, or a labelId the dataset does not evaluate) is
    a miss (``segmentation.missed_pixels``); non-finite depth is an error naming the file. ``verify`` checks
    every value of the split first (else a sample)."""
    from crosstask_cli.data.labels import cityscapes_lookup, has_cityscapes_labels
    from crosstask_cli.predictions import match_predictions, read_depth_prediction, read_seg_prediction

    pred_dir, data = Path(pred_dir), Path(data)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: not a directory of predictions")
    meta = read_meta(data)
    s = open_split(data, split)
    verify_split(s, meta, full=verify)
    files = match_predictions(pred_dir, list(s.files))
    lookup = None
    if files.format == "cityscapes":
        if not has_cityscapes_labels(meta.dataset, meta.num_classes):
            raise DatasetError(
                f"{pred_dir}: holds Cityscapes labelIds, but {data} is {meta.dataset} with {meta.num_classes} classes"
            )
        lookup = cityscapes_lookup(meta.num_classes, meta.categories or "original")
    metrics = MetricSet.for_dataset(meta, (protocol,))
    h, w = meta.height, meta.width
    for start in range(0, len(s), batch_size):
        ids = s.files[start : start + batch_size]
        stop = start + len(ids)
        seg_t = torch.from_numpy(np.array(s.labels[start:stop], dtype=np.int64))
        dep_t = torch.from_numpy(np.array(s.depth[start:stop], dtype=np.float32))
        seg_p = dep_p = None
        if files.seg is not None:
            segs = [read_seg_prediction(files.seg[i], files.format, lookup, h, w) for i in ids]
            seg_p = torch.from_numpy(np.stack(segs).astype(np.int64))
        if files.depth is not None:
            dep_p = torch.from_numpy(np.stack([read_depth_prediction(files.depth[i], h, w) for i in ids]))
        metrics.update(seg_p, seg_t, dep_p, dep_t)
    result = metrics.result(protocol, split)
    if len(files.tasks) < 2:  # scored one task: the other's metrics are not reported, rather than NaN
        result.tasks = files.tasks
        if files.seg is None:
            result.segmentation = {}
        if files.depth is None:
            result.depth = {}
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
        return {
            "miou": r.segmentation.get("miou"),
            "pixel_acc": r.segmentation.get("pixel_acc"),
            "abs_err": r.depth.get("abs_err"),
            "rel_err": r.depth.get("rel_err"),
            "energy": r.energy["mean"],
        }

    bad.corruption = {
        "kind": corruption.kind,
        "severity": corruption.severity,
        "clean": summary(clean),
        "corrupted": summary(bad),
        "auroc": {
            k: auroc(clean.energy["per_image"][k], bad.energy["per_image"][k]) for k in ("combined", "seg", "depth")
        },
    }
    return bad
