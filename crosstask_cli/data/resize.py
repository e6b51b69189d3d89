"""Resizing that keeps images, labels and depth aligned (labels and depth nearest at pixel centres, images area-interpolated)."""

from __future__ import annotations

import numpy as np


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel, sampling at pixel centres (as PIL NEAREST, torch nearest-exact)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an H×W(×…) array at pixel centres; exact class ids and depth values."""
    if a.shape[:2] == (height, width):
        return a
    return a[nearest_indices(a.shape[0], height)[:, None], nearest_indices(a.shape[1], width)[None, :]]


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased resize of an H×W×3 uint8 image: area averaging when shrinking, bilinear when enlarging."""
    import cv2

    if img.shape[:2] == (height, width):
        return img
    shrink = height < img.shape[0] or width < img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
