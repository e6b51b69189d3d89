"""The loss functions the tasks are trained with (:mod:`crosstask_cli.tasks` chooses them; the whole objective is
:class:`crosstask_cli.objective.CrossTaskLoss`).

Conventions: seg logits B×C×H×W, seg targets B×H×W long with ``ignore_index`` for unlabelled pixels,
depth B×1×H×W with 0 = invalid in targets, normals B×3×H×W with the zero vector = invalid. Inputs are never
modified.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crosstask_cli.errors import ConfigError

DEPTH_LOSSES = ("l1", "mse", "logl1", "smoothl1")  # the elementwise errors of masked_depth_loss


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


def masked_normal_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str = "cos"
) -> torch.Tensor:
    """Surface-normal loss over the valid pixels of the whole batch (MTAN's reduction). pred, target: B×3×H×W
    (pred unit length), valid: B×H×W bool. ``cos`` = 1 − mean of p·t (MTAN's definition); ``l1`` = mean of
    Σ_c |p_c − t_c|. A batch without valid pixels gives 0."""
    if kind == "cos":
        per_pixel = 1 - (pred * target).sum(1)
    elif kind == "l1":
        per_pixel = (pred - target).abs().sum(1)
    else:
        raise ConfigError(f"unknown normal loss {kind!r}; choose from cos, l1")
    m = valid.to(per_pixel.dtype)
    return (per_pixel * m).sum() / m.sum().clamp(min=1)


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
