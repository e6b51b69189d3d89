"""Evaluation metrics, streaming and vectorised, on any device.

``standard`` protocol (default): one confusion matrix over all evaluated pixels; depth errors pooled over
every valid pixel of the split, so results do not depend on the batch size.
``original`` protocol: the reference implementation's averaging (per-image mIoU / pixel accuracy; depth
errors per batch, averaged weighted by batch size), for comparison with its published table.
"""

from __future__ import annotations

import math

import torch

from crosstask_cli.errors import ConfigError, DatasetError
from crosstask_cli.ops import class_labels

PROTOCOLS = ("standard", "original")


class ConfusionMatrix:
    """Streaming C×C confusion matrix (rows = target, columns = prediction), int64, plus ``misses``: per target
    class, the pixels predicted as an id outside 0..C−1 (e.g. 255 "unlabeled").

    ``update(pred, target)``: pred B×H×W class ids (or B×C×H×W logits), target B×H×W with ``ignore_index``.
    A miss is a false negative of its target class and a false positive of none, as the official Cityscapes
    evaluator counts a predicted label that is not evaluated; it counts as a wrong pixel in the pixel accuracy.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None):
        self.num_classes = num_classes
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"ignore_index must be in 0..255 (targets are byte class ids), got {ignore_index}")
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.misses = torch.zeros(num_classes, dtype=torch.int64)
        self._bad_targets: torch.Tensor | None = None  # out-of-range target pixels, counted on the device

    def reset(self) -> None:
        self.matrix.zero_()
        self.misses.zero_()
        self._bad_targets = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        if pred.ndim == target.ndim + 1:
            pred = class_labels(pred)  # already in 0..C−1
        else:
            # every id outside the classes (negative, C, 255, …) becomes column C: a miss
            pred = torch.where((pred >= 0) & (pred < c), pred, c)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        # One bincount over a 256×(C+1) table indexed by (target, pred): rows 0..C−1 are the confusion matrix
        # (column C: the misses), the ignore row is dropped, and any other non-empty row is an out-of-range
        # target. No masked copies.
        k = c + 1
        idx = torch.add(pred.long(), target.long(), alpha=k)
        counts = torch.bincount(idx.flatten(), minlength=256 * k)
        if counts.numel() > 256 * k:
            raise DatasetError(f"target class id out of range 0..{c - 1}")
        table = counts.view(256, k)
        bad = table[c:].sum() - table[self.ignore_index].sum() if self.ignore_index >= c else table[c:].sum()
        # checked when the scores are computed: reading it here would wait for the device after every batch
        self._bad_targets = bad if self._bad_targets is None else self._bad_targets + bad
        block = table[:c]
        if self.ignore_index < c:  # an ignore index inside the class range: that row is not counted
            block = block.clone()
            block[self.ignore_index] = 0
        if self.matrix.device != block.device:  # accumulate where the batches are (no copy back per batch)
            self.matrix = self.matrix.to(block.device)
            self.misses = self.misses.to(block.device)
        self.matrix += block[:, :c]
        self.misses += block[:, c]

    def merge(self, other: torch.Tensor, misses: torch.Tensor | None = None) -> None:
        """Add a matrix (and its misses) from elsewhere (another process or shard)."""
        self.matrix += other.to(self.matrix)
        if misses is not None:
            self.misses += misses.to(self.misses)

    def iou(self) -> torch.Tensor:
        """Per-class IoU (float64); NaN for classes absent from both target and prediction."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) + self.misses.to(m) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def check_targets(self) -> None:
        """Raise if any target id seen so far was outside 0..C−1 and not the ignore index."""
        if self._bad_targets is not None and int(self._bad_targets):
            raise DatasetError(f"target class id out of range 0..{self.num_classes - 1}")

    def compute(self) -> dict:
        self.check_targets()
        iou = self.iou()
        present = ~torch.isnan(iou)
        total = int(self.matrix.sum()) + int(self.misses.sum())
        return {
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(self.matrix.diag().sum()) / total if total else float("nan"),
            "per_class_iou": {n: float(v) for n, v in zip(self.class_names, iou.tolist(), strict=True)},
            "missed_pixels": int(self.misses.sum()),
        }


_TINY = torch.finfo(torch.float32).tiny


_LOG_FLOOR = 1e-9  # predictions are floored here for log and reciprocal errors, as the original clips them
DEPTH_SUMS = ("n", "abs", "rel", "sq", "delta1", "delta2", "delta3", "sq_rel", "log_sq", "inv_sq")


@torch.no_grad()
def depth_error_sums(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sums over the valid target pixels (t > 0) of one batch, float64, in the order of :data:`DEPTH_SUMS`:
    [n, Σ|p−t|, Σ|p−t|/t, Σ(p−t)², the counts with max(p/t, t/p) < 1.25, 1.25², 1.25³, Σ(p−t)²/t,
    Σ(log p − log t)², Σ(1/p − 1/t)²]. A non-positive prediction is never within a δ threshold; for the log and
    reciprocal terms predictions are floored at 1e-9 (as the original method clips them).

    pred and target: B×1×H×W or B×H×W, dataset depth units. Elementwise work is float32 and arithmetic only
    (comparisons to bool masks cost several times more on CPU) and is written into one 10×… buffer, reduced
    in float32 per image row (exact for the counts) and then in float64 over rows: summing a float32 tensor
    with ``dtype=float64`` would copy it first. Row sums do not depend on the batch, so pooled results do
    not depend on how the split is batched.
    """
    pred = pred.reshape(target.shape).float()
    target = target.float()
    k = len(DEPTH_SUMS)
    if target.numel() == 0:
        return torch.zeros(k, dtype=torch.float64, device=target.device)
    buf = torch.empty((k, *target.shape), device=target.device)
    valid, err = buf[0], buf[1]
    valid.copy_(target > 0)
    safe_t = target.clamp(min=_TINY)  # invalid pixels divide by a positive number; their terms are zeroed
    torch.sub(pred, safe_t, out=err).abs_().mul_(valid)
    torch.div(err, safe_t, out=buf[2])
    torch.mul(err, err, out=buf[3])
    positive = pred.clamp(min=0)  # p ≤ 0 → p/t = 0 and t/p = inf: never accurate
    ratio = torch.maximum(positive / safe_t, safe_t / positive).div_(valid)  # invalid → inf
    for i, e in enumerate((1, 2, 3)):
        # sign(ratio − thr) is −1 exactly where ratio < thr (0 at equality, 1 above, NaN for NaN)
        torch.sub(ratio, 1.25**e, out=buf[4 + i]).sign_().clamp_(max=0)
    torch.div(buf[3], safe_t, out=buf[7])
    floored = pred.clamp(min=_LOG_FLOOR)
    log_t = safe_t.log()
    torch.sub(floored.log(), log_t, out=buf[8]).mul_(valid).square_()
    torch.sub(floored.reciprocal(), safe_t.reciprocal(), out=buf[9]).mul_(valid).square_()
    sums = buf.view(k, -1, target.shape[-1]).sum(2).sum(1, dtype=torch.float64)
    sums[4:7].neg_()
    return sums


class DepthMetrics:
    """Depth errors pooled over every valid target pixel (t > 0) seen so far.

    ``update(pred, target)``: B×1×H×W or B×H×W, dataset depth units. ``compute()``: abs_err = mean|p−t|,
    rel_err = mean|p−t|/t, sq_rel = mean(p−t)²/t, rmse = √mean(p−t)², rmse_log = √mean(log p − log t)²,
    irmse = √mean(1/p − 1/t)² (in 1/m for metric depth; the depth task leaves it out for inverse depth, where the
    reciprocal is depth itself and explodes as p → 0), δk = share with max(p/t, t/p) < 1.25^k.
    """

    KEYS = ("abs_err", "rel_err", "sq_rel", "rmse", "rmse_log", "irmse", "delta1", "delta2", "delta3")

    def __init__(self) -> None:
        self.sums = torch.zeros(len(DEPTH_SUMS), dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add one batch; returns its own sums (float64, on the inputs' device, in the order of DEPTH_SUMS)."""
        row = depth_error_sums(pred, target)
        if self.sums.device != row.device:  # accumulate on the batches' device: no host sync per batch
            self.sums = self.sums.to(row.device)
        self.sums += row
        return row

    def merge(self, other: torch.Tensor) -> None:
        self.sums += other.to(self.sums)

    def compute(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            return dict.fromkeys(self.KEYS, float("nan"))
        s = dict(zip(DEPTH_SUMS, (self.sums / n).tolist(), strict=True))
        return {
            "abs_err": s["abs"],
            "rel_err": s["rel"],
            "sq_rel": s["sq_rel"],
            "rmse": math.sqrt(s["sq"]),
            "rmse_log": math.sqrt(s["log_sq"]),
            "irmse": math.sqrt(s["inv_sq"]),
            "delta1": s["delta1"],
            "delta2": s["delta2"],
            "delta3": s["delta3"],
        }


@torch.no_grad()
def per_image_scores(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image of a batch (pred: B×H×W class ids, target: B×H×W): (mIoU over the classes whose union within the
    image's labelled pixels is not empty, pixel accuracy, labelled pixel count), float64 each of shape B; an image
    without labelled pixels gets 0 for both scores. Ids outside 0..C−1 are clamped into it.
    """
    b, c = target.shape[0], num_classes
    # Per-image confusion matrices in one bincount, index = image·(C+1)·C + target·C + pred, with ignored
    # pixels counted in an extra target row C that is then dropped (no masked copies).
    raw = target.reshape(b, -1)
    t = torch.where(raw == ignore_index, c, raw.long().clamp(0, c - 1))
    p = pred.reshape(b, -1).long().clamp(0, c - 1)
    base = torch.arange(b, device=t.device)[:, None] * ((c + 1) * c)
    idx = (t * c).add_(p).add_(base)
    cm = torch.bincount(idx.flatten(), minlength=b * (c + 1) * c).reshape(b, c + 1, c)[:, :c].double()
    tp = cm.diagonal(dim1=1, dim2=2)
    labelled = cm.sum((1, 2))
    union = cm.sum(1) + cm.sum(2) - tp
    present = union > 0
    miou = torch.where(present, tp / union.clamp(min=1), 0).sum(1) / present.sum(1).clamp(min=1)
    return miou, tp.sum(1) / labelled.clamp(min=1), labelled


class OriginalProtocolMetrics:
    """The reference implementation's averaging, reproduced for comparison with its table.

    mIoU and pixel accuracy per image (classes with an empty union within the image's labelled pixels are
    skipped), averaged over images; abs/rel error pooled within each ``update`` call (one evaluation
    batch), then averaged weighted by batch size.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.images = 0
        # [Σ image mIoU, Σ image pixel acc, images with labels, Σ batch abs·b, Σ batch rel·b, images with depth],
        # float64 on the batches' device; read once, in compute()
        self.sums = torch.zeros(6, dtype=torch.float64)

    def _add(self, row: torch.Tensor, at: slice) -> None:
        if self.sums.device != row.device:
            self.sums = self.sums.to(row.device)
        self.sums[at] += row

    @torch.no_grad()
    def update(
        self,
        seg_pred: torch.Tensor | None,
        seg_target: torch.Tensor,
        depth_pred: torch.Tensor | None,
        depth_target: torch.Tensor,
    ) -> None:
        if seg_pred is not None:
            self._update_seg(seg_pred, seg_target)
        if depth_pred is not None:
            self._update_depth(depth_pred, depth_target)

    def _update_seg(self, seg_pred: torch.Tensor, seg_target: torch.Tensor) -> None:
        if seg_pred.ndim == seg_target.ndim + 1:
            seg_pred = class_labels(seg_pred)
        b = seg_target.shape[0]
        image_iou, image_acc, labelled = per_image_scores(seg_pred, seg_target, self.num_classes, self.ignore_index)
        has_pixels = (labelled > 0).double()
        self._add(torch.stack([(image_iou * has_pixels).sum(), (image_acc * has_pixels).sum(), has_pixels.sum()]),
                  slice(0, 3))  # fmt: skip
        self.images += b

    def _update_depth(self, depth_pred: torch.Tensor, depth_target: torch.Tensor) -> None:
        self.add_depth_sums(depth_error_sums(depth_pred, depth_target), depth_target.shape[0])

    def add_depth_sums(self, sums: torch.Tensor, batch_size: int) -> None:
        """Add one batch from its ``depth_error_sums`` (shared with ``DepthMetrics`` to compute them once); a batch
        without valid depth pixels does not count."""
        n = sums[0]
        weight = (n > 0).double() * batch_size
        self._add(torch.stack([sums[1] / n.clamp(min=1) * weight, sums[2] / n.clamp(min=1) * weight, weight]),
                  slice(3, 6))  # fmt: skip

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        miou, acc, s, abs_sum, rel_sum, d = self.sums.tolist()
        return {
            "miou": miou / s if s else nan,
            "pixel_acc": acc / s if s else nan,
            "abs_err": abs_sum / d if d else nan,
            "rel_err": rel_sum / d if d else nan,
        }


class ConsistencyMetrics:
    """How well the transferred predictions agree with the direct ones (the method's own quantity).

    seg_agreement: share of labelled pixels where argmax(seg) == argmax(seg_from_depth);
    depth_gap: mean |depth − depth_from_seg| over valid-depth pixels, dataset units.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.sums = torch.zeros(4, dtype=torch.float64)  # agree, labelled, gap, valid

    @torch.no_grad()
    def update(
        self,
        seg: torch.Tensor,
        seg_from_depth: torch.Tensor,
        depth: torch.Tensor,
        depth_from_seg: torch.Tensor,
        seg_target: torch.Tensor,
        depth_target: torch.Tensor,
    ) -> None:
        labelled = seg_target != self.ignore_index
        agree = (class_labels(seg) == class_labels(seg_from_depth)) & labelled
        valid = depth_target.reshape(depth.shape) > 0
        gap = ((depth - depth_from_seg).abs() * valid).double().sum()
        row = torch.stack([agree.sum().double(), labelled.sum().double(), gap, valid.sum().double()])
        if self.sums.device != row.device:
            self.sums = self.sums.to(row.device)
        self.sums += row

    def compute(self) -> dict[str, float]:
        a, n, g, v = self.sums.tolist()
        return {"seg_agreement": a / n if n else float("nan"), "depth_gap": g / v if v else float("nan")}


# --- surface normals ------------------------------------------------------------------------------------------

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees
NORMAL_KEYS = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
ANGLE_BINS_PER_DEGREE = 256  # the exact median's histogram: 1/256° bins, reported at a bin's centre (±1/512°)


@torch.no_grad()
def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular error in degrees and validity, each B×H×W: angle = degrees(arccos(clamp(p·t, −1, 1))) between a
    predicted unit normal and the target's (both B×3×H×W), valid where the target is not the zero vector."""
    target = target.float()
    valid = (target != 0).any(1)
    cos = (pred.float() * target).sum(1).clamp_(-1, 1)
    return torch.rad2deg(torch.acos(cos)), valid


class NormalMetrics:
    """Surface-normal errors pooled over every valid target pixel seen so far (batch-size invariant).

    ``update(pred, target)``: B×3×H×W unit normals, target zero vector = invalid. ``compute()``: mean and median
    angular error (degrees) and the shares of pixels within 11.25°, 22.5° and 30°. The median is exact to 1/512°:
    every error is counted in a histogram of 1/256° bins (on the device, no host read), and the median of the
    counts is read off its cumulative sum (the mean of the two middle values for an even count, as NumPy's).
    """

    KEYS = NORMAL_KEYS
    BINS = 180 * ANGLE_BINS_PER_DEGREE

    def __init__(self) -> None:
        self.hist = torch.zeros(self.BINS, dtype=torch.int64)
        self.sums = torch.zeros(2 + len(NORMAL_THRESHOLDS), dtype=torch.float64)  # n, Σ angle, counts within

    def reset(self) -> None:
        self.hist.zero_()
        self.sums.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add one batch; returns its own sums (float64: n, Σ angle, counts within each threshold)."""
        angle, valid = normal_angles(pred, target)
        bins = (angle * ANGLE_BINS_PER_DEGREE).long().clamp_(0, self.BINS - 1)
        idx = torch.where(valid, bins, self.BINS)  # invalid pixels go to an overflow bin that is dropped
        counts = torch.bincount(idx.flatten(), minlength=self.BINS + 1)[: self.BINS]
        v = valid.to(angle.dtype)
        row = torch.stack([v.sum(dtype=torch.float64), (angle * v).sum(dtype=torch.float64),
                           *((angle < thr).logical_and_(valid).sum(dtype=torch.float64) for thr in NORMAL_THRESHOLDS)])  # fmt: skip
        if self.sums.device != row.device:  # accumulate on the batches' device: no host sync per batch
            self.sums, self.hist = self.sums.to(row.device), self.hist.to(row.device)
        self.sums += row
        self.hist += counts
        return row

    def compute(self) -> dict[str, float]:
        n = int(self.sums[0])
        if n == 0:
            return dict.fromkeys(self.KEYS, float("nan"))
        s = self.sums.tolist()
        return {
            "mean_angle": s[1] / n,
            "median_angle": histogram_median(self.hist, n),
            **{key: c / n for key, c in zip(self.KEYS[2:], s[2:], strict=True)},
        }


def histogram_median(hist: torch.Tensor, n: int) -> float:
    """The median of ``n`` values counted in :data:`ANGLE_BINS_PER_DEGREE` bins per degree (bin centres)."""
    cum = hist.cpu().cumsum(0)
    ranks = torch.tensor([(n - 1) // 2 + 1, n // 2 + 1])  # 1-based ranks of the two middle values
    b = torch.searchsorted(cum, ranks).double()
    return float(((b + 0.5) / ANGLE_BINS_PER_DEGREE).mean())


class NormalOriginalMetrics:
    """MTAN's averaging, which its successors copy: per evaluation batch the mean and median angular error and the
    shares within 11.25°/22.5°/30° over the batch's valid pixels (its "median" is the batch's median, the mean of
    the two middle values for an even count, as ``np.median``), then the plain mean over batches. A batch without
    valid pixels is skipped (MTAN's NumPy code would give NaN). The median is computed on the device: the
    batch's errors are sorted with invalid pixels last and the middle ranks gathered."""

    KEYS = NORMAL_KEYS

    def __init__(self) -> None:
        self.sums = torch.zeros(len(NORMAL_KEYS) + 1, dtype=torch.float64)  # Σ of each batch value, batches

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        angle, valid = normal_angles(pred, target)
        flat, ok = angle.flatten(), valid.flatten()
        n = ok.sum()
        ordered = torch.where(ok, flat, torch.inf).sort().values
        middle = torch.stack([(n - 1).clamp(min=0) // 2, n // 2]).clamp_(max=max(flat.numel() - 1, 0))
        median = ordered.gather(0, middle).double().mean() if flat.numel() else torch.zeros((), dtype=torch.float64)
        count = n.double().clamp(min=1)
        keep = (n > 0).double()
        total = (flat * ok.to(flat.dtype)).sum(dtype=torch.float64)
        within = [((flat < thr) & ok).sum(dtype=torch.float64) for thr in NORMAL_THRESHOLDS]
        values = torch.stack([total / count, median, *(w / count for w in within)])
        row = torch.cat([torch.where(n > 0, values, torch.zeros_like(values)), keep[None]])  # inf median if none
        if self.sums.device != row.device:
            self.sums = self.sums.to(row.device)
        self.sums += row

    def compute(self) -> dict[str, float]:
        s = self.sums.tolist()
        batches = s[-1]
        if batches == 0:
            return dict.fromkeys(self.KEYS, float("nan"))
        return {k: v / batches for k, v in zip(self.KEYS, s[:-1], strict=True)}
