"""Consistency energy: how much the direct and the transferred predictions of one image disagree, per pixel.

It needs no labels (the original project's analysis script computes it; Zamir et al., CVPR 2020, show that such
energy rises with prediction error). Definitions, in one place:

- segmentation, per pixel: KL(softmax(direct) ‖ softmax(transferred)) = Σ_c p_c·(log p_c − log q_c), in nats, with p
  from the direct logits and q from the depth→seg TaskTransferNet;
- depth, per pixel: |direct − transferred| (seg→depth TaskTransferNet), in the dataset's depth units;
- combined, per pixel: ``seg_weight``·seg + ``depth_weight``·depth (½ and ½, the original's weights).

Per-image energies are means over pixels. Depth energy is averaged over **all** pixels by default, as prediction
has no depth targets; :func:`image_energies` averages over a ``valid`` mask instead when one is given (evaluation
passes the valid-depth mask, so that the energy and the depth error cover the same pixels). Computed in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.network import Predictions

SEG_WEIGHT = 0.5
DEPTH_WEIGHT = 0.5
NEEDS_BOTH = (
    "consistency energy compares the direct predictions with the TaskTransferNets' ones; it needs a model with "
    "both tasks and TaskTransferNets (trained with --consistency xtsc or xtc)"
)


@dataclass(frozen=True)
class EnergyMaps:
    """Per-pixel energies, each B×H×W float32: ``seg`` (nats), ``depth`` (depth units), ``combined``; and the
    weights ``combined`` was made with."""

    seg: torch.Tensor
    depth: torch.Tensor
    combined: torch.Tensor
    seg_weight: float = SEG_WEIGHT
    depth_weight: float = DEPTH_WEIGHT


def energy_maps(pred: Predictions, seg_weight: float = SEG_WEIGHT, depth_weight: float = DEPTH_WEIGHT) -> EnergyMaps:
    """The per-pixel energies of a full forward pass (``pred`` with all four fields)."""
    if any(t is None for t in pred):
        raise ConfigError(NEEDS_BOTH)
    log_p = F.log_softmax(pred.seg.float(), dim=1)
    log_q = F.log_softmax(pred.seg_from_depth.float(), dim=1)
    seg = (log_p.exp() * (log_p - log_q)).sum(1).clamp(min=0)  # ≥ 0 in exact arithmetic; rounding can dip below
    depth = (pred.depth.float() - pred.depth_from_seg.float()).abs().squeeze(1)
    return EnergyMaps(seg, depth, seg_weight * seg + depth_weight * depth, seg_weight, depth_weight)


def image_energies(maps: EnergyMaps, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image energies (each of shape B): ``seg`` = mean over pixels, ``depth`` = mean over all pixels or over
    ``valid`` (B×H×W or B×1×H×W bool; an image without valid pixels gets 0), ``combined`` = the weighted sum of
    those two means (with the weights the maps were made with)."""
    seg = maps.seg.flatten(1).mean(1)
    if valid is None:
        depth = maps.depth.flatten(1).mean(1)
    else:
        mask = valid.reshape(maps.depth.shape).to(maps.depth.dtype)
        depth = (maps.depth * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
    return {"seg": seg, "depth": depth, "combined": maps.seg_weight * seg + maps.depth_weight * depth}


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
    device (one host transfer at the end).

    Per image: seg/depth/combined energy (depth over valid-depth pixels, so that it covers the pixels the depth
    error covers), mIoU (over classes present in the image's target or prediction), abs err; per pixel, on a
    regular grid of every ``pixel_stride``-th row and column: seg energy and whether the direct class is wrong
    (labelled pixels), depth energy and |error| (valid pixels). Also the transferred predictions' own metrics.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None,
                 pixel_stride: int = 4) -> None:  # fmt: skip
        from crosstask_cli.metrics import ConfusionMatrix, DepthMetrics

        self.num_classes, self.ignore_index, self.pixel_stride = num_classes, ignore_index, pixel_stride
        self.seg_from_depth = ConfusionMatrix(num_classes, ignore_index, class_names)
        self.depth_from_seg = DepthMetrics()
        self._images: list[torch.Tensor] = []  # B×5: seg, depth, combined energy, mIoU, abs err
        self._seg_pixels: list[torch.Tensor] = []  # 2×n: energy, wrong
        self._depth_pixels: list[torch.Tensor] = []  # 2×n: energy, |error|

    @torch.no_grad()
    def update(self, pred: Predictions, seg_target: torch.Tensor, depth_target: torch.Tensor) -> None:
        from crosstask_cli.metrics import per_image_scores
        from crosstask_cli.ops import class_labels

        maps = energy_maps(pred)
        valid = depth_target.reshape(maps.depth.shape) > 0
        e = image_energies(maps, valid)
        labels = class_labels(pred.seg)
        labelled = seg_target != self.ignore_index
        miou, _, count_labelled = per_image_scores(labels, seg_target, self.num_classes, self.ignore_index)
        miou = torch.where(count_labelled > 0, miou, torch.nan)
        err = (pred.depth.float().reshape(maps.depth.shape) - depth_target.reshape(maps.depth.shape)).abs()
        count = valid.flatten(1).sum(1)
        abs_img = torch.where(count > 0, (err * valid).flatten(1).sum(1) / count.clamp(min=1), torch.nan)
        self._images.append(torch.stack([e["seg"], e["depth"], e["combined"], miou.float(), abs_img.float()], 1))
        s = self.pixel_stride
        grid = (slice(None), slice(None, None, s), slice(None, None, s))
        lab, val = labelled[grid], valid[grid]
        wrong = (labels[grid] != seg_target[grid]).float()
        self._seg_pixels.append(torch.stack([maps.seg[grid][lab], wrong[lab]]))
        self._depth_pixels.append(torch.stack([maps.depth[grid][val], err[grid][val]]))
        self.seg_from_depth.update(pred.seg_from_depth, seg_target)
        self.depth_from_seg.update(pred.depth_from_seg, depth_target)

    def per_image(self) -> np.ndarray:
        """N×5 float64: seg, depth, combined energy, mIoU, abs err, in evaluation order."""
        if not self._images:
            return np.zeros((0, 5))
        return torch.cat(self._images).double().cpu().numpy()

    def compute(self) -> dict:
        images = self.per_image()
        seg_e, depth_e, comb_e, miou, abs_err = images.T if len(images) else [np.zeros(0)] * 5
        seg_px = torch.cat(self._seg_pixels, 1).double().cpu().numpy() if self._seg_pixels else np.zeros((2, 0))
        dep_px = torch.cat(self._depth_pixels, 1).double().cpu().numpy() if self._depth_pixels else np.zeros((2, 0))
        transferred_seg = self.seg_from_depth.compute()
        return {
            "mean": {"seg": _mean(seg_e), "depth": _mean(depth_e), "combined": _mean(comb_e)},
            "transferred": {
                "seg_from_depth": {k: transferred_seg[k] for k in ("miou", "pixel_acc")},
                "depth_from_seg": {
                    k: v for k, v in self.depth_from_seg.compute().items() if k in ("abs_err", "rel_err")
                },
            },
            "spearman": {
                "seg_energy_vs_1_minus_miou": spearman(seg_e, 1 - miou),
                "depth_energy_vs_abs_err": spearman(depth_e, abs_err),
                "combined_vs_1_minus_miou": spearman(comb_e, 1 - miou),
                "combined_vs_abs_err": spearman(comb_e, abs_err),
            },
            "sparsification": {
                "pixels_seg_error_by_seg_energy": sparsification(seg_px[0], seg_px[1]),
                "pixels_abs_err_by_depth_energy": sparsification(dep_px[0], dep_px[1]),
                "images_1_minus_miou_by_combined": sparsification(comb_e, 1 - miou),
                "images_abs_err_by_combined": sparsification(comb_e, abs_err),
            },
            "pixel_stride": self.pixel_stride,
            "per_image": {"seg": seg_e.tolist(), "depth": depth_e.tolist(), "combined": comb_e.tolist()},
        }


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan
