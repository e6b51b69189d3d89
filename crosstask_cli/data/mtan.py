"""MTAN's preprocessed NYUv2 and CityScapes (``{train,val}/{image,label*,depth[,normal]}/<i>.npy``), validated on read.

image: H×W×3 float in [0, 1]; label: H×W with −1 = ignore; depth: H×W(×1), 0 = invalid
(metres for NYUv2, inverse depth for CityScapes); normal (NYUv2): H×W×3 (or 3×H×W) unit vectors in the camera
frame, the zero vector = invalid.
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


def mtan_indices(src: Path, split: str, label_dir: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Sample ids (file stems, sorted numerically) present in image/, the label dir, depth/ and the ``extra``
    folders (``normal``)."""
    img_dir = src / split / "image"
    if not img_dir.is_dir():
        return []
    ids = sorted((p.stem for p in img_dir.glob("*.npy")), key=lambda s: (len(s), s))
    missing = [
        str(src / split / d / f"{i}.npy")
        for i in ids
        for d in (label_dir, "depth", *extra)
        if not (src / split / d / f"{i}.npy").is_file()
    ]
    if missing:
        what = "/".join(("label", "depth", *extra))
        raise DatasetError(f"{src}: {len(missing)} {what} files missing in split {split!r}, e.g. {missing[:5]}")
    return ids


def has_normals(src: Path) -> bool:
    """Whether MTAN's layout at ``src`` has the normal folders (NYUv2 does)."""
    return all((src / split / "normal").is_dir() for split in MTAN_SPLITS)


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
    image, targets = convert_mtan_targets(src, split, idx, label_dir, num_classes, height, width)
    return image, targets["seg"], targets["depth"]


def _normal(path: Path, h: int, w: int) -> np.ndarray:
    """One MTAN normal array → H×W×3 float32: checked (finite, components in [−1, 1]), the zero vector kept as the
    invalid marker, every other vector scaled to unit length in float64 (MTAN's are unit already, to float32
    precision, so they stay as they are up to rounding)."""
    normal = _load(path)
    if normal.shape == (3, h, w) and normal.shape != (h, w, 3):
        normal = np.moveaxis(normal, 0, -1)
    if normal.shape != (h, w, 3):
        raise DatasetError(f"{path}: shape {normal.shape}, expected {(h, w, 3)} (or {(3, h, w)})")
    if not np.issubdtype(normal.dtype, np.floating) or not np.isfinite(normal).all():
        raise DatasetError(f"{path}: expected finite float normals")
    if np.abs(normal).max(initial=0) > 1 + 1e-3:
        raise DatasetError(
            f"{path}: values up to {np.abs(normal).max():.3g}, expected unit-vector components in [−1, 1]"
        )
    n = normal.astype(np.float64)
    length = np.sqrt(np.square(n).sum(-1, keepdims=True))
    return np.where(length > 0, n / np.maximum(length, 1e-300), 0.0).astype(np.float32)


def convert_mtan_targets(
    src: Path,
    split: str,
    idx: str,
    label_dir: str,
    num_classes: int,
    height: int,
    width: int,
    tasks: tuple[str, ...] = ("seg", "depth"),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Load and validate one MTAN sample for ``tasks``: (image uint8 RGB, {"seg": labels uint8 with 255 ignore,
    "depth": float32, "normal": H×W×3 float32}) at height×width (targets by the nearest pixel centre)."""
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
    targets = {"seg": resize_nearest(labels, height, width), "depth": resize_nearest(depth, height, width)}
    if "normal" in tasks:
        targets["normal"] = resize_nearest(_normal(src / split / "normal" / f"{idx}.npy", h, w), height, width)
    return resize_image(image, height, width), {t: targets[t] for t in tasks}
