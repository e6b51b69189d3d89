"""Small tensor operations shared by losses, metrics, prediction and figures."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """B×C×H×W scores → B×H×W int64 class ids: the first maximum, like ``argmax``.

    On CPU, ``max(1).indices`` and ``argmax(1)`` walk the class dimension of an NCHW tensor one element at a
    time, several times slower than a vectorised pass (README "Performance"). Instead: the per-pixel maximum (a
    vectorised reduction), ``score >= max`` as bytes weighted C, C−1, …, 1, and a byte maximum over classes, which
    is C − (first maximising class). A pixel with a NaN score gets class C−1 (``max`` would give the NaN's class).
    """
    c = logits.shape[1]
    if logits.device.type != "cpu" or not logits.is_floating_point() or c > 255:
        return logits.max(1).indices
    x = logits.contiguous()
    weights = torch.arange(c, 0, -1, dtype=torch.uint8).view(1, c, *([1] * (x.ndim - 2)))
    first = torch.ge(x, x.amax(1, keepdim=True)).view(torch.uint8).mul_(weights).amax(1)
    return torch.sub(c, first).clamp_(max=c - 1).long()


def upsampled_class_ids(logits, size: tuple[int, int]) -> np.ndarray:
    """C×h×w logits (CPU tensor) → H×W uint8 class ids of the bilinearly upsampled logits (half-pixel centres, as
    ``F.interpolate(..., align_corners=False)``), first maximum on ties. OpenCV resizes the channels-last logits
    about 3× faster than torch on a CPU at full Cityscapes size."""
    import cv2

    hwc = np.ascontiguousarray(logits.permute(1, 2, 0).numpy(), dtype=np.float32)
    up = cv2.resize(hwc, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if up.ndim == 2:  # one class: OpenCV drops the channel axis
        return np.zeros(size, np.uint8)
    return up.argmax(2).astype(np.uint8)
