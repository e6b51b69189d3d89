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


class ConfusionMatrix:
    """Streaming C×C confusion matrix (rows = target, columns = prediction), int64.

    ``update(pred, target)``: pred B×H×W class ids (or B×C×H×W logits), target B×H×W with ``ignore_index``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        keep = target != self.ignore_index
        t = target[keep].long()
        p = pred[keep].long()
        if t.numel() and (int(t.max()) >= self.num_classes or int(t.min()) < 0):
            raise ValueError(f"target class id out of range 0..{self.num_classes - 1}")
        p = p.clamp(0, self.num_classes - 1)
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device, torch.int64)

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
        pred = pred.reshape(target.shape).double()
        target = target.double()
        valid = target > 0
        p, t = pred[valid], target[valid]
        err = (p - t).abs()
        ratio = torch.maximum(p / t, t / p.clamp(min=1e-12))
        ratio = torch.where(p > 0, ratio, torch.full_like(ratio, math.inf))
        row = torch.stack(
            [
                torch.tensor(float(t.numel()), dtype=torch.float64, device=t.device),
                err.sum(),
                (err / t).sum(),
                err.square().sum(),
                (ratio < 1.25).sum().double(),
                (ratio < 1.25**2).sum().double(),
                (ratio < 1.25**3).sum().double(),
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
        self, seg_pred: torch.Tensor, seg_target: torch.Tensor, depth_pred: torch.Tensor, depth_target: torch.Tensor
    ) -> None:
        if seg_pred.ndim == seg_target.ndim + 1:
            seg_pred = seg_pred.argmax(1)
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
        agree = (seg.argmax(1) == seg_from_depth.argmax(1)) & labelled
        valid = depth_target.reshape(depth.shape) > 0
        gap = ((depth - depth_from_seg).abs() * valid).double().sum()
        row = torch.stack([agree.sum().double(), labelled.sum().double(), gap, valid.sum().double()])
        self.sums += row.cpu()

    def compute(self) -> dict[str, float]:
        a, n, g, v = self.sums.tolist()
        return {"seg_agreement": a / n if n else float("nan"), "depth_gap": g / v if v else float("nan")}
