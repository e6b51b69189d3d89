"""MTAN's preprocessed NYUv2 and CityScapes (``{train,val}/{image,label*,depth}/<i>.npy``), validated on read.

image: H×W×3 float in [0, 1]; label: H×W with −1 = ignore; depth: H×W(×1), 0 = invalid
(metres for NYUv2, inverse depth for CityScapes).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from crosstask_cli.data.prepared import DatasetError
from crosstask_cli.data.resize import resize_image, resize_nearest

MTAN_SPLITS = ("train", "val")


def is_mtan_layout(src: Path, label_dirs: tuple[str, ...]) -> bool:
    return (src / "train" / "image").is_dir() and any((src / "train" / d).is_dir() for d in label_dirs)


def mtan_indices(src: Path, split: str, label_dir: str) -> list[str]:
    """Sample ids (file stems, sorted numerically) present in image/, the label dir and depth/."""
    img_dir = src / split / "image"
    if not img_dir.is_dir():
        return []
    ids = sorted((p.stem for p in img_dir.glob("*.npy")), key=lambda s: (len(s), s))
    missing = [
        str(src / split / d / f"{i}.npy")
        for i in ids
        for d in (label_dir, "depth")
        if not (src / split / d / f"{i}.npy").is_file()
    ]
    if missing:
        raise DatasetError(f"{src}: {len(missing)} label/depth files missing in split {split!r}, e.g. {missing[:5]}")
    return ids


# np.load parses the .npy header with ast.literal_eval, which CPython 3.11 can break on when several threads
# parse at once ("SystemError: AST constructor recursion depth mismatch"); prepare decodes in threads.
_NPY_HEADER_LOCK = threading.Lock()


def _load(path: Path) -> np.ndarray:
    try:
        with _NPY_HEADER_LOCK:
            return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc


def convert_mtan_sample(
    src: Path, split: str, idx: str, label_dir: str, num_classes: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load and validate one MTAN sample; return (image uint8 RGB, labels uint8 with 255 ignore, depth float32)."""
    ip, lp, dp = (src / split / d / f"{idx}.npy" for d in ("image", label_dir, "depth"))
    image, label, depth = _load(ip), _load(lp), _load(dp)
    for path, arr in ((ip, image), (lp, label), (dp, depth)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DatasetError(f"{path}: dtype {arr.dtype}, expected a numeric array")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise DatasetError(f"{path}: contains NaN or inf")
    if image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"{ip}: shape {image.shape}, expected H×W×3")
    h, w = image.shape[:2]
    if label.shape != (h, w):
        raise DatasetError(f"{lp}: shape {label.shape}, expected {(h, w)} to match {ip.name}")
    if depth.shape not in ((h, w), (h, w, 1)):
        raise DatasetError(f"{dp}: shape {depth.shape}, expected {(h, w, 1)} or {(h, w)}")
    if np.issubdtype(image.dtype, np.floating):
        if image.min() < -1e-3 or image.max() > 1 + 1e-3:
            raise DatasetError(f"{ip}: values in [{image.min():.3g}, {image.max():.3g}], expected floats in [0, 1]")
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    else:
        image = image.astype(np.uint8)
    if np.issubdtype(label.dtype, np.floating) and not np.all(label == np.round(label)):
        raise DatasetError(f"{lp}: non-integer label values")
    bad = (label != -1) & ((label < 0) | (label >= num_classes))
    if bad.any():
        raise DatasetError(
            f"{lp}: label values {np.unique(label[bad])[:10].tolist()} out of range (expected −1 or 0..{num_classes - 1})"
        )
    if depth.min() < 0:
        raise DatasetError(f"{dp}: negative depth values")
    labels = np.where(label == -1, 255, label).astype(np.uint8)
    depth = depth.reshape(h, w).astype(np.float32)
    return (
        resize_image(image, height, width),
        resize_nearest(labels, height, width),
        resize_nearest(depth, height, width),
    )
