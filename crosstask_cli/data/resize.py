"""Resizing that keeps images, labels and depth aligned (labels and depth nearest at pixel centres, images area-interpolated)."""

from __future__ import annotations

import numpy as np


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an H×W(×C) array sampling at pixel centres (OpenCV's INTER_NEAREST_EXACT, the
    same as PIL NEAREST and torch ``nearest-exact``): exact class ids and depth values, labels aligned with the
    image. Arrays of a dtype OpenCV does not resize (e.g. int64) are resized through int32."""
    import cv2

    if a.shape[:2] == (height, width):
        return a
    src = np.ascontiguousarray(a)
    if src.dtype in (np.int64, np.uint32, np.bool_):
        return cv2.resize(src.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST_EXACT).astype(a.dtype)
    return cv2.resize(src, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased resize of an H×W×3 uint8 image: area averaging when shrinking, bilinear when enlarging."""
    import cv2

    if img.shape[:2] == (height, width):
        return img
    shrink = height < img.shape[0] or width < img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
