"""Evaluation metrics, streaming and vectorised, on any device.

``standard`` protocol (default): one confusion matrix over all evaluated pixels; depth errors pooled over
every valid pixel of the split, so results do not depend on the batch size.
``original`` protocol: the reference implementation's averaging (per-image mIoU / pixel accuracy; depth
errors per batch, averaged weighted by batch size), for comparison with its published table.
"""

from __future__ import annotations

import math

import torch

PROTOCOLS = ("standard", "original")


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """B×C×H×W scores → B×H×W class ids (first maximum on ties, like argmax).

    ``max(1).indices`` rather than ``argmax(1)``: on CPU, argmax over the class dimension of an NCHW tensor
    is an order of magnitude slower (41 ms vs 2.3 ms for 8×7×128×256 here).
    """
    return logits.max(1).indices


class ConfusionMatrix:
    """Streaming C×C confusion matrix (rows = target, columns = prediction), int64.

    ``update(pred, target)``: pred B×H×W class ids (or B×C×H×W logits), target B×H×W with ``ignore_index``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None):
        self.num_classes = num_classes
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must be in 0..255 (targets are byte class ids), got {ignore_index}")
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        if pred.ndim == target.ndim + 1:
            pred = class_labels(pred)  # already in 0..C−1
        else:
            pred = pred.clamp(0, c - 1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        # One bincount over a 256×C table indexed by (target, pred): rows 0..C−1 are the confusion matrix, the
        # ignore row is dropped, and any other non-empty row is an out-of-range target. No masked copies.
        idx = target.long() * c + pred.long()
        counts = torch.bincount(idx.flatten(), minlength=256 * c)
        if counts.numel() > 256 * c:
            raise ValueError(f"target class id out of range 0..{c - 1}")
        table = counts.view(256, c)
        bad = table[c:].sum() - table[self.ignore_index].sum() if self.ignore_index >= c else table[c:].sum()
        if int(bad):
            raise ValueError(f"target class id out of range 0..{c - 1}")
        block = table[:c]
        if self.ignore_index < c:  # an ignore index inside the class range: that row is not counted
            block = block.clone()
            block[self.ignore_index] = 0
        self.matrix += block.to(self.matrix.device, torch.int64)

    def merge(self, other: torch.Tensor) -> None:
        """Add a matrix from elsewhere (another process or shard)."""
        self.matrix += other.to(self.matrix)

    def iou(self) -> torch.Tensor:
        """Per-class IoU (float64); NaN for classes absent from both target and prediction."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def compute(self) -> dict:
        iou = self.iou()
        present = ~torch.isnan(iou)
        total = int(self.matrix.sum())
        return {
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(self.matrix.diag().sum()) / total if total else float("nan"),
            "per_class_iou": {n: float(v) for n, v in zip(self.class_names, iou.tolist(), strict=True)},
        }


class DepthMetrics:
    """Depth errors pooled over every valid target pixel (t > 0) seen so far.

    ``update(pred, target)``: B×1×H×W or B×H×W, dataset depth units.
    """

    def __init__(self) -> None:
        self.sums = torch.zeros(7, dtype=torch.float64)  # n, abs, rel, sq, δ1, δ2, δ3

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        # float32 elementwise passes, float64 sums: results do not depend on how the split is batched.
        pred = pred.reshape(target.shape).float()
        target = target.float()
        valid = target > 0
        safe_t = torch.where(valid, target, 1.0)
        err = (pred - safe_t).abs_().mul_(valid)
        ratio = torch.maximum(pred / safe_t, safe_t / pred)
        ratio.masked_fill_(~valid | (pred <= 0), torch.inf)  # a non-positive prediction is never accurate
        f64 = torch.float64
        row = torch.stack(
            [
                valid.sum().to(f64),
                err.sum(dtype=f64),
                (err / safe_t).sum(dtype=f64),
                err.square().sum(dtype=f64),
                (ratio < 1.25).sum().to(f64),
                (ratio < 1.25**2).sum().to(f64),
                (ratio < 1.25**3).sum().to(f64),
            ]
        )
        self.sums += row.cpu()

    def merge(self, other: torch.Tensor) -> None:
        self.sums += other.to(self.sums)

    def compute(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            return dict.fromkeys(("abs_err", "rel_err", "rmse", "delta1", "delta2", "delta3"), float("nan"))
        s = (self.sums / n).tolist()
        return {
            "abs_err": s[1],
            "rel_err": s[2],
            "rmse": math.sqrt(s[3]),
            "delta1": s[4],
            "delta2": s[5],
            "delta3": s[6],
        }


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
        self.miou_sum = 0.0
        self.acc_sum = 0.0
        self.images = 0
        self.seg_images = 0
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.depth_images = 0

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
        b, c = seg_target.shape[0], self.num_classes
        keep = (seg_target != self.ignore_index).reshape(b, -1)
        t = seg_target.reshape(b, -1).long().clamp(0, c - 1)
        p = seg_pred.reshape(b, -1).long().clamp(0, c - 1)
        # Per-image confusion matrices in one bincount: index = image·C² + target·C + pred.
        idx = (torch.arange(b, device=t.device)[:, None] * c * c + t * c + p)[keep]
        cm = torch.bincount(idx, minlength=b * c * c).reshape(b, c, c).double()
        tp = cm.diagonal(dim1=1, dim2=2)
        union = cm.sum(1) + cm.sum(2) - tp
        present = union > 0
        has_pixels = keep.sum(1) > 0
        image_iou = torch.where(present, tp / union.clamp(min=1), 0).sum(1) / present.sum(1).clamp(min=1)
        image_acc = tp.sum(1) / keep.sum(1).clamp(min=1)
        self.miou_sum += float(image_iou[has_pixels].sum())
        self.acc_sum += float(image_acc[has_pixels].sum())
        self.seg_images += int(has_pixels.sum())
        self.images += b

    def _update_depth(self, depth_pred: torch.Tensor, depth_target: torch.Tensor) -> None:
        b = depth_target.shape[0]
        dp = depth_pred.reshape(depth_target.shape).double()
        dt = depth_target.double()
        valid = dt > 0
        if valid.any():
            err = (dp - dt).abs()[valid]
            self.abs_sum += float(err.mean()) * b
            self.rel_sum += float((err / dt[valid]).mean()) * b
            self.depth_images += b

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        s, d = self.seg_images, self.depth_images
        return {
            "miou": self.miou_sum / s if s else nan,
            "pixel_acc": self.acc_sum / s if s else nan,
            "abs_err": self.abs_sum / d if d else nan,
            "rel_err": self.rel_sum / d if d else nan,
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
        self.sums += row.cpu()

    def compute(self) -> dict[str, float]:
        a, n, g, v = self.sums.tolist()
        return {"seg_agreement": a / n if n else float("nan"), "depth_gap": g / v if v else float("nan")}
