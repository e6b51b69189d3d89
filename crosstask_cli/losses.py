"""The method's losses: direct seg/depth against targets, transferred predictions against detached direct ones.

Conventions: seg logits B×C×H×W, seg targets B×H×W long with ``ignore_index`` for unlabelled pixels,
depth B×1×H×W with 0 = invalid in targets. Inputs are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.network import Predictions
from crosstask_cli.ops import class_labels

DEPTH_LOSSES = ("l1", "mse", "logl1", "smoothl1")
TDEPTH_LOSSES = ("l1", "ssim")
TSEG_LOSSES = ("ce", "kl", "soft-kl")
CONSISTENCY = ("xtsc", "xtc", "none")
LOSS_NAMES = ("seg", "depth", "tseg", "tdepth", "seg_task", "depth_task")


def _elementwise_depth_error(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    diff = pred - target
    if kind == "l1":
        return diff.abs()
    if kind == "mse":
        return diff.square()
    if kind == "logl1":
        return torch.log1p(diff.abs())
    if kind == "smoothl1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
    raise ConfigError(f"unknown depth loss {kind!r}; choose from {DEPTH_LOSSES}")


def masked_depth_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image mean of the elementwise error over valid pixels, then mean over the batch.

    pred, target, valid: B×1×H×W (valid boolean). An image without valid pixels contributes 0.
    """
    err = _elementwise_depth_error(pred, target, kind) * valid
    per_image = err.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    return per_image.mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Masked SSIM loss: maps × valid, 3×3 mean filters (no padding), C1 = 0.01², C2 = 0.03²;
    clamp((1 − SSIM)/2, 0, 1) summed per image / the image's valid-pixel count, mean over the batch."""
    m = valid.to(pred.dtype)
    x, y = pred * m, target * m
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x.square()
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y.square()
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (sigma_x + sigma_y + c2)
    )
    loss_map = ((1 - ssim) / 2).clamp(0, 1)
    per_image = loss_map.flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    return per_image.mean()


def smoothed_cross_entropy(
    log_probs: torch.Tensor, labels: torch.Tensor, smoothing: float, mask: torch.Tensor, reduction: str = "valid"
) -> torch.Tensor:
    """Cross-entropy against one-hot labels smoothed to (1−ε) on target and ε/(C−1) elsewhere.

    log_probs: B×C×H×W, labels: B×H×W long, mask: B×H×W bool of the pixels that count. ``reduction``:
    ``valid`` = mean over the masked pixels (``nn.CrossEntropyLoss(ignore_index=…)``), ``all`` = their sum
    divided by every pixel of the batch (the original method's transferred-segmentation reduction).
    """
    return _reduce(_smoothed_nll(log_probs, labels, smoothing), mask, reduction)


def _smoothed_nll(log_probs: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-pixel −Σ_c q_c·log p_c for the smoothed one-hot q of ``labels``: B×H×W."""
    num_classes = log_probs.shape[1]
    nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    if smoothing <= 0:
        return nll
    others = -(log_probs.sum(1)) - nll  # Σ_{c≠t} −log p_c
    return (1 - smoothing) * nll + smoothing / (num_classes - 1) * others


def _reduce(per_pixel: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    total = (per_pixel * mask).sum()
    if reduction == "valid":
        return total / mask.sum().clamp(min=1)
    if reduction == "all":
        return total / max(mask.numel(), 1)
    raise ConfigError(f"reduction must be valid or all, got {reduction!r}")


def smoothed_one_hot_kl(
    log_probs: torch.Tensor, labels: torch.Tensor, smoothing: float, mask: torch.Tensor, reduction: str = "all"
) -> torch.Tensor:
    """KL(q ‖ p) per pixel, q = one-hot of ``labels`` smoothed to (1−ε) / ε/(C−1), p = exp(log_probs); reduced
    like :func:`smoothed_cross_entropy`. KL = smoothed CE − H(q), and H(q) is the same constant at every pixel
    (0·log 0 = 0), so with ε = 0 this equals the cross-entropy."""
    num_classes = log_probs.shape[1]
    neg_entropy = 0.0
    if smoothing > 0:
        off = smoothing / (num_classes - 1)
        neg_entropy = (1 - smoothing) * math.log(1 - smoothing) if smoothing < 1 else 0.0
        neg_entropy += smoothing * math.log(off)
    return _reduce(_smoothed_nll(log_probs, labels, smoothing) + neg_entropy, mask, reduction)


@dataclass
class CrossTaskLoss:
    """All loss components of the method.

    ``alpha`` weighs the transferred-depth loss inside the segmentation task loss, ``gamma`` the
    transferred-segmentation loss inside the depth task loss:
    seg_task = (1−α)·seg + α·tdepth, depth_task = (1−γ)·depth + γ·tseg.
    ``consistency``: ``xtsc`` (the method) trains the transferred predictions against the detached direct
    ones; ``xtc`` against the ground truth (transferred depth with the ``lp`` loss, transferred seg with plain
    cross-entropy, as the original); ``none`` has no transferred terms.
    ``tseg_loss`` (xtsc): ``ce`` = label-smoothed cross-entropy against the argmax of the detached direct seg;
    ``kl`` = KL(smoothed one-hot of that argmax ‖ softmax(transferred)); ``soft-kl`` (an extension) =
    KL(softmax(detached direct) ‖ softmax(transferred)). All three are summed over the labelled pixels and
    divided by every pixel of the batch, as the original reduces them. A task the model lacks
    contributes 0. Calling it returns a dict of scalar tensors named by :data:`LOSS_NAMES`.
    """

    num_classes: int
    alpha: float = 0.01
    gamma: float = 0.01
    lp: str = "l1"
    tdep_loss: str = "l1"
    tseg_loss: str = "ce"
    label_smoothing: float = 0.0
    ignore_index: int = 255
    consistency: str = "xtsc"

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY:
            raise ConfigError(f"unknown consistency {self.consistency!r}; choose from {CONSISTENCY}")
        if self.lp not in DEPTH_LOSSES:
            raise ConfigError(f"unknown lp {self.lp!r}; choose from {DEPTH_LOSSES}")
        if self.tdep_loss not in TDEPTH_LOSSES:
            raise ConfigError(f"unknown tdep_loss {self.tdep_loss!r}; choose from {TDEPTH_LOSSES}")
        if self.tseg_loss not in TSEG_LOSSES:
            raise ConfigError(f"unknown tseg_loss {self.tseg_loss!r}; choose from {TSEG_LOSSES}")
        for name in ("alpha", "gamma", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")

    def __call__(
        self, pred: Predictions, seg_target: torch.Tensor, depth_target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        labelled = seg_target != self.ignore_index
        safe_target = torch.where(labelled, seg_target, torch.zeros_like(seg_target))
        valid = depth_target > 0
        ref = pred.seg if pred.seg is not None else pred.depth
        zero = ref.new_zeros((), dtype=torch.float32)
        seg = depth = tdepth = tseg = zero
        if pred.seg is not None:
            seg = smoothed_cross_entropy(F.log_softmax(pred.seg.float(), dim=1), safe_target, 0.0, labelled)
        if pred.depth is not None:
            depth = masked_depth_loss(pred.depth.float(), depth_target, valid, self.lp)

        use_transfer = self.consistency != "none"
        if use_transfer and pred.depth_from_seg is not None:
            transferred = pred.depth_from_seg.float()
            if self.consistency == "xtc":  # as the original's xtc: the direct depth loss against the ground truth
                tdepth = masked_depth_loss(transferred, depth_target, valid, self.lp)
            elif self.tdep_loss == "l1":  # xtsc: against the detached direct depth
                tdepth = masked_depth_loss(transferred, pred.depth.detach().float(), valid, "l1")
            else:
                tdepth = ssim_loss(transferred, pred.depth.detach().float(), valid)
        if use_transfer and pred.seg_from_depth is not None:
            transferred_log_probs = F.log_softmax(pred.seg_from_depth.float(), dim=1)
            if self.consistency == "xtc":  # as the original's xtc: plain cross-entropy against the ground truth
                tseg = smoothed_cross_entropy(transferred_log_probs, safe_target, 0.0, labelled)
            elif self.tseg_loss == "soft-kl":
                direct_log_probs = F.log_softmax(pred.seg.detach().float(), dim=1)
                kl = (direct_log_probs.exp() * (direct_log_probs - transferred_log_probs)).sum(1)
                tseg = _reduce(kl, labelled, "all")
            else:
                direct_labels = class_labels(pred.seg.detach().float())
                loss = smoothed_cross_entropy if self.tseg_loss == "ce" else smoothed_one_hot_kl
                tseg = loss(transferred_log_probs, direct_labels, self.label_smoothing, labelled, "all")

        return {
            "seg": seg,
            "depth": depth,
            "tseg": tseg,
            "tdepth": tdepth,
            "seg_task": (1 - self.alpha) * seg + self.alpha * tdepth,
            "depth_task": (1 - self.gamma) * depth + self.gamma * tseg,
        }
