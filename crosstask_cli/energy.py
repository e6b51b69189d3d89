"""Consistency energy: how much the direct and the transferred predictions of one image disagree, per pixel.

It needs no labels (the original project's analysis script computes it; Zamir et al., CVPR 2020, show that such
energy rises with prediction error). Definitions, in one place, for every TaskTransferNet (source → target), by the
target task's spec (:meth:`~crosstask_cli.tasks.base.TaskSpec.energy`):

- segmentation, per pixel: KL(softmax(direct) ‖ softmax(transferred)) = Σ_c p_c·(log p_c − log q_c), in nats;
- depth, per pixel: |direct − transferred|, in the dataset's depth units;
- normals, per pixel: 1 − cos(direct, transferred) (0 = same direction, 2 = opposite);
- a task's energy: the mean of the terms of the nets predicting it; combined, per pixel: the mean of every pair's
  term (weights 1/P; with seg and depth ½ and ½, the original's weights).

Per-image energies are means over pixels. Depth (and normal) energy is averaged over **all** pixels by default, as
prediction has no targets; :func:`image_energies` averages over ``valid`` masks instead when they are given
(evaluation passes the targets' valid pixels, so that the energy and the error cover the same pixels; segmentation
energy is averaged over every pixel). Computed in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.network import Predictions
from crosstask_cli.tasks import TaskContext, get_task, ordered, transfer_order

SEG_WEIGHT = 0.5
DEPTH_WEIGHT = 0.5
NEEDS_BOTH = (
    "consistency energy compares the direct predictions with the TaskTransferNets' ones; it needs a model with "
    "both tasks and TaskTransferNets (trained with --consistency xtsc or xtc)"
)

Pair = tuple[str, str]


@dataclass(frozen=True)
class EnergyMaps:
    """Per-pixel energies, each B×H×W float32: ``terms`` per pair (source, target), ``combined`` (their weighted
    sum) and the ``weights`` it was made with. ``task(t)`` is the mean of the terms into t; ``seg`` and ``depth``
    are the original's two."""

    terms: dict[Pair, torch.Tensor]
    combined: torch.Tensor
    weights: dict[Pair, float]

    @property
    def targets(self) -> tuple[str, ...]:
        return ordered({t for _, t in self.terms})

    def task(self, target: str) -> torch.Tensor:
        own = [v for (_, t), v in self.terms.items() if t == target]
        return own[0] if len(own) == 1 else torch.stack(own).mean(0)

    @property
    def seg(self) -> torch.Tensor:
        return self.task("seg")

    @property
    def depth(self) -> torch.Tensor:
        return self.task("depth")

    @property
    def seg_weight(self) -> float:
        return sum(w for (_, t), w in self.weights.items() if t == "seg")

    @property
    def depth_weight(self) -> float:
        return sum(w for (_, t), w in self.weights.items() if t == "depth")


def energy_maps(
    pred: Predictions,
    seg_weight: float | None = None,
    depth_weight: float | None = None,
    weights: Mapping[Pair, float] | None = None,
) -> EnergyMaps:
    """The per-pixel energies of a full forward pass (``pred`` with its direct and transferred predictions).
    ``weights`` per pair (default 1/P each); ``seg_weight``/``depth_weight`` set those of the original's two pairs
    (depth→seg, seg→depth)."""
    pairs = transfer_order(pred.transferred)
    if not pairs or any(t not in pred.direct for _, t in pairs):
        raise ConfigError(NEEDS_BOTH)
    w = {p: 1.0 / len(pairs) for p in pairs}
    w.update({("depth", "seg"): SEG_WEIGHT, ("seg", "depth"): DEPTH_WEIGHT} if len(pairs) == 2 and
             set(pairs) == {("depth", "seg"), ("seg", "depth")} else {})  # fmt: skip
    if seg_weight is not None:
        w[("depth", "seg")] = seg_weight
    if depth_weight is not None:
        w[("seg", "depth")] = depth_weight
    w.update(weights or {})
    terms = {(s, t): get_task(t).energy(pred.direct[t], pred.transferred[(s, t)]) for s, t in pairs}
    combined = None
    for pair in pairs:
        part = w[pair] * terms[pair]
        combined = part if combined is None else combined + part
    return EnergyMaps(terms, combined, {p: w[p] for p in pairs})


def image_energies(
    maps: EnergyMaps, valid: torch.Tensor | Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Per-image energies (each of shape B): per target task the mean over pixels of its energy (over all pixels,
    or over ``valid[task]`` (B×H×W or B×1×H×W bool) for the tasks whose spec averages over valid pixels; a tensor
    given alone is the depth mask; an image without valid pixels gets 0), and ``combined`` = the weighted sum of the
    pairs' means (with the weights the maps were made with)."""
    masks = {"depth": valid} if isinstance(valid, torch.Tensor) else dict(valid or {})

    def mean(values: torch.Tensor, target: str) -> torch.Tensor:
        mask = masks.get(target) if get_task(target).energy_over_valid else None
        if mask is None:
            return values.flatten(1).mean(1)
        m = mask.reshape(values.shape).to(values.dtype)
        return (values * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)

    out = {t: mean(maps.task(t), t) for t in maps.targets}
    combined = None
    for (s, t), weight in maps.weights.items():
        value = out[t] if sum(1 for _, x in maps.terms if x == t) == 1 else mean(maps.terms[(s, t)], t)
        part = weight * value
        combined = part if combined is None else combined + part
    out["combined"] = combined
    return out


# --- how well energy predicts error --------------------------------------------------------------------------

SPARSIFICATION_STEPS = 100  # removed fractions 0, 1 %, …, 99 %


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), ignoring pairs with a NaN; NaN with < 3 pairs or a
    constant input."""
    import pandas as pd

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3:
        return math.nan
    rx, ry = pd.Series(x[keep]).rank().to_numpy(), pd.Series(y[keep]).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _remaining_mean_error(order: np.ndarray, error: np.ndarray, steps: int) -> np.ndarray:
    """Mean error of what remains after removing the first ⌊f·n⌋ items of ``order``, f = 0, 1/steps, …"""
    n = len(error)
    kept_first = error[order[::-1]]  # the items kept longest first
    cum = np.concatenate([[0.0], np.cumsum(kept_first, dtype=np.float64)])
    removed = np.floor(np.arange(steps) / steps * n).astype(np.int64)
    keep = n - removed
    return cum[keep] / keep


def sparsification(energy: np.ndarray, error: np.ndarray, steps: int = SPARSIFICATION_STEPS) -> dict:
    """Sparsification curve of ``error`` when the highest-``energy`` items are removed first, and its oracle
    (removing the highest errors first). Fractions f = 0, 1/steps, …, (steps−1)/steps; removed = ⌊f·n⌋ items,
    ties in energy broken by position (stable). Returns the curves, their areas (mean over f: ``ausc`` and
    ``oracle_ausc``), ``ause`` = ausc − oracle_ausc (0 = perfect ranking) and ``random`` (the mean error, the
    expected area of a random ranking). Items with a NaN energy or error are dropped first."""
    energy, error = np.asarray(energy, np.float64), np.asarray(error, np.float64)
    keep = ~(np.isnan(energy) | np.isnan(error))
    energy, error = energy[keep], error[keep]
    fractions = np.arange(steps) / steps
    if len(error) == 0:
        nan = [math.nan] * steps
        return {"fractions": fractions.tolist(), "curve": nan, "oracle": nan, "ausc": math.nan,
                "oracle_ausc": math.nan, "ause": math.nan, "random": math.nan, "count": 0}  # fmt: skip
    curve = _remaining_mean_error(np.argsort(-energy, kind="stable"), error, steps)
    oracle = _remaining_mean_error(np.argsort(-error, kind="stable"), error, steps)
    return {
        "fractions": fractions.tolist(),
        "curve": curve.tolist(),
        "oracle": oracle.tolist(),
        "ausc": float(curve.mean()),
        "oracle_ausc": float(oracle.mean()),
        "ause": float(curve.mean() - oracle.mean()),
        "random": float(error.mean()),
        "count": int(len(error)),
    }


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of separating ``positives`` (e.g. corrupted images) from ``negatives`` (clean)
    by their score: P(score_pos > score_neg) + ½·P(equal), from average ranks (Mann–Whitney U)."""
    import pandas as pd

    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    neg, pos = neg[~np.isnan(neg)], pos[~np.isnan(pos)]
    if len(neg) == 0 or len(pos) == 0:
        return math.nan
    ranks = pd.Series(np.concatenate([neg, pos])).rank().to_numpy()
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(neg) * len(pos)))


class ConsistencyReport:
    """What ``crosstask eval`` reports about the consistency energy, accumulated batch by batch on the batches'
    device (one host transfer at the end), for the TaskTransferNets ``pairs`` (default the original's two).

    Per image: each target task's energy (over the pixels its error covers: valid depth and normals, every pixel
    for segmentation), the combined energy, and each target task's score (mIoU over classes present in the
    image's target or prediction; abs err; mean angle); per pixel, on a regular grid of every ``pixel_stride``-th
    row and column: each target task's energy and error at its valid pixels (seg: whether the direct class is
    wrong; depth |error|; normals the angle). Also the transferred predictions' own metrics.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None,
                 pixel_stride: int = 4, pairs=(("seg", "depth"), ("depth", "seg")),
                 depth_kind: str = "metric") -> None:  # fmt: skip
        self.num_classes, self.ignore_index, self.pixel_stride = num_classes, ignore_index, pixel_stride
        self.ctx = TaskContext(num_classes, ignore_index, tuple(class_names or ()), (), depth_kind)
        self.pairs = transfer_order(pairs)
        self.targets = ordered({t for _, t in self.pairs})
        self.transferred = {p: get_task(p[1]).metrics("standard", self.ctx) for p in self.pairs}
        self._images: list[torch.Tensor] = []  # B×(2T+1): energy per target, combined, score per target
        self._pixels: dict[str, list[torch.Tensor]] = {t: [] for t in self.targets}  # 2×n: energy, error

    @torch.no_grad()
    def update(self, pred: Predictions, *targets) -> None:
        """``update(pred, {task: target})``, or the original's ``update(pred, seg_target, depth_target)``."""
        target = dict(targets[0]) if len(targets) == 1 else {"seg": targets[0], "depth": targets[1]}
        pred = Predictions(direct=pred.direct, transferred={p: pred.transferred[p] for p in self.pairs})
        maps = energy_maps(pred)
        valid = {t: get_task(t).valid(target[t], self.ctx) for t in self.targets}
        e = image_energies(maps, valid)
        scores = [get_task(t).image_scores(pred.direct[t], target[t], self.ctx).float() for t in self.targets]
        self._images.append(torch.stack([*(e[t] for t in self.targets), e["combined"], *scores], 1))
        s = self.pixel_stride
        grid = (slice(None), slice(None, None, s), slice(None, None, s))
        for t in self.targets:
            spec = get_task(t)
            keep = valid[t][grid]
            error = spec.pixel_errors(pred.direct[t], target[t], self.ctx)
            self._pixels[t].append(torch.stack([maps.task(t)[grid][keep], error[grid][keep]]))
        for (s_, t), metrics in self.transferred.items():
            metrics.update(pred.transferred[(s_, t)], target[t])

    def per_image(self) -> np.ndarray:
        """N×(2T+1) float64 in evaluation order: each target task's energy, the combined energy, each target task's
        score (for seg and depth: seg, depth, combined energy, mIoU, abs err)."""
        if not self._images:
            return np.zeros((0, 2 * len(self.targets) + 1))
        return torch.cat(self._images).double().cpu().numpy()

    def compute(self) -> dict:
        images = self.per_image()
        k = len(self.targets)
        columns = images.T if len(images) else [np.zeros(0)] * (2 * k + 1)
        energy = dict(zip(self.targets, columns[:k], strict=True))
        combined = columns[k]
        scores = dict(zip(self.targets, columns[k + 1 :], strict=True))
        errors = {t: get_task(t).error_of_score(scores[t]) for t in self.targets}  # seg's score is its mIoU
        pixels = {t: torch.cat(v, 1).double().cpu().numpy() if v else np.zeros((2, 0)) for t, v in self._pixels.items()}
        specs = {t: get_task(t) for t in self.targets}
        return {
            "mean": {**{t: _mean(energy[t]) for t in self.targets}, "combined": _mean(combined)},
            "transferred": {
                f"{t}_from_{s}": {m: v for m, v in metrics.compute().items() if m in get_task(t).compared}
                for (s, t), metrics in self.transferred.items()
            },
            "spearman": {
                **{f"{t}_energy_vs_{specs[t].image_error}": spearman(energy[t], errors[t]) for t in self.targets},
                **{f"combined_vs_{specs[t].image_error}": spearman(combined, errors[t]) for t in self.targets},
            },
            "sparsification": {
                **{
                    f"pixels_{specs[t].pixel_error}_by_{t}_energy": sparsification(pixels[t][0], pixels[t][1])
                    for t in self.targets
                },
                **{
                    f"images_{specs[t].image_error}_by_combined": sparsification(combined, errors[t])
                    for t in self.targets
                },
            },  # fmt: skip
            "pixel_stride": self.pixel_stride,
            "per_image": {**{t: energy[t].tolist() for t in self.targets}, "combined": combined.tolist()},
        }


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan
