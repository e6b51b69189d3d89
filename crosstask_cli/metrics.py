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
    irmse = √mean(1/p − 1/t)² (in the reciprocal of the dataset's units: 1/m for metric depth; for inverse
    depth, the reciprocal is proportional to depth), δk = share with max(p/t, t/p) < 1.25^k.
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
