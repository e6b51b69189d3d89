"""Reading and encoding image files (OpenCV), with the checks OpenCV leaves out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """Any common image file → H×W×3 uint8 RGB (grayscale, RGBA, 16-bit and EXIF orientation handled)."""
    import cv2

    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    check_complete(data)
    # ANYDEPTH|ANYCOLOR keeps 16-bit data and applies the EXIF orientation (IMREAD_UNCHANGED would not).
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise ValueError("not a readable image")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_complete(data: bytes) -> None:
    """Reject truncated JPEG/PNG files, which OpenCV would otherwise decode partially (grey-filled)."""
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise ValueError("truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise ValueError("truncated PNG (no IEND chunk)")


def encode_png(array: np.ndarray) -> bytes:
    """H×W (ids) or H×W×3 RGB uint8 array → PNG bytes."""
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()
