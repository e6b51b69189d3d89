"""Cityscapes: the official raw layout (leftImg8bit/gtFine/disparity) and its conversion to prepared arrays.

Raw files: ``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png``, ``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png``,
``disparity/{split}/{city}/{stem}_disparity.png`` (uint16) and optionally ``camera/{split}/{city}/{stem}_camera.json``,
paired by stem ``{city}_{seq}_{frame}``. crosstask's synthetic scenes add ``normal/{split}/{city}/{stem}_normal.png``
(16-bit RGB surface normals, see :func:`read_normal_png`); a dataset has the normal task when every sample has one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosstask_cli.data.labels import CITYSCAPES_MAX_ID, cityscapes_lookup
from crosstask_cli.data.prepared import DatasetError
from crosstask_cli.data.resize import resize_image, resize_nearest
from crosstask_cli.errors import ConfigError

BASELINE_M = 0.209313  # Cityscapes stereo baseline, metres
FOCAL_PX = 2262.52  # Cityscapes focal length at full resolution (2048×1024), pixels
INVERSE_DEPTH_MAX = 0.4922  # clip of the inverse-depth encoding, as the original method and MTAN
METRIC_DEPTH_MAX = 300.0
RAW_SPLITS = ("train", "val")


@dataclass(frozen=True)
class RawSample:
    stem: str
    image: Path
    label: Path
    disparity: Path
    camera: Path | None
    normal: Path | None = None


def is_raw_layout(src: Path) -> bool:
    return (src / "leftImg8bit").is_dir() and (src / "gtFine").is_dir()


def find_raw_samples(src: Path, split: str) -> list[RawSample]:
    """Pair images, labels and disparity of one split by stem; raise naming the first unpaired files."""
    img_dir = src / "leftImg8bit" / split
    if not img_dir.is_dir():
        return []
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    samples, missing = [], []
    for img in images:
        city = img.parent.name
        stem = img.name[: -len("_leftImg8bit.png")]
        label = src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        disp = src / "disparity" / split / city / f"{stem}_disparity.png"
        camera = src / "camera" / split / city / f"{stem}_camera.json"
        normal = src / "normal" / split / city / f"{stem}_normal.png"
        absent = [p for p in (label, disp) if not p.is_file()]
        if absent:
            missing.extend(str(p) for p in absent)
            continue
        samples.append(RawSample(stem, img, label, disp, camera if camera.is_file() else None,
                                 normal if normal.is_file() else None))  # fmt: skip
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(
            f"{src}: {len(missing)} label/disparity files missing for split {split!r}, e.g. {', '.join(missing[:3])}{more}"
        )
    return samples


def read_png(path: Path, flags: int, what: str, dtype: type | None = None) -> np.ndarray:
    import cv2

    if not path.is_file() or path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty or missing {what} file")
    data = cv2.imread(str(path), flags)
    if data is None:
        raise DatasetError(f"{path}: unreadable or corrupt {what} image")
    if dtype is not None and data.dtype != dtype:
        raise DatasetError(f"{path}: {what} has dtype {data.dtype}, expected {np.dtype(dtype).name}")
    return data


def disparity_scale(src: Path) -> float:
    """Factor from a raw dataset's disparity pixels to full-resolution (2048-wide) Cityscapes pixels: 1 for real
    Cityscapes; for crosstask's synthetic scenes, whose disparity is in pixels of the written (smaller) images,
    the ``disparity_scale`` their ``synthetic.json`` records (absent in older versions, which wrote
    full-resolution disparity)."""
    marker = Path(src) / "synthetic.json"
    if not marker.is_file():
        return 1.0
    try:
        scale = float(json.loads(marker.read_text()).get("disparity_scale", 1.0))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{marker}: not a crosstask synthetic-scene record ({exc})") from exc
    if not scale > 0:
        raise DatasetError(f"{marker}: disparity_scale must be positive, got {scale}")
    return scale


def disparity_to_depth(
    p: np.ndarray, kind: str, baseline: float = BASELINE_M, focal: float = FOCAL_PX, scale: float = 1.0
) -> np.ndarray:
    """Raw 16-bit Cityscapes disparity PNG values → depth (float32, 0 = invalid).

    inverse: (p − 1)/65536 · scale clipped at 0.4922 (full-resolution disparity pixels / 256, as MTAN; ``scale``
    see :func:`disparity_scale`); metric: metres = baseline·focal / ((p − 1)/256), with the focal length in the
    disparity's pixels. p = 0 (no measurement) and p = 1 (zero disparity) are invalid.
    """
    p = p.astype(np.float64)
    valid = p > 1
    if kind == "inverse":
        depth = np.where(valid, np.minimum((p - 1) / 65536.0 * scale, INVERSE_DEPTH_MAX), 0.0)
    elif kind == "metric":
        disp = np.where(valid, (p - 1) / 256.0, 1.0)
        depth = np.where(valid, np.minimum(baseline * focal / disp, METRIC_DEPTH_MAX), 0.0)
    else:
        raise ConfigError(f"depth kind must be 'inverse' or 'metric', got {kind!r}")
    return depth.astype(np.float32)


def read_camera(path: Path | None, scale: float = 1.0) -> tuple[float, float]:
    """(baseline m, fx px) from a camera JSON; without one, Cityscapes' values (fx in the disparity's pixels)."""
    if path is None:
        return BASELINE_M, FOCAL_PX / scale
    try:
        cam = json.loads(path.read_text())
        return float(cam["extrinsic"]["baseline"]), float(cam["intrinsic"]["fx"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a Cityscapes camera json (need extrinsic.baseline, intrinsic.fx)") from exc


def read_raw_sample(
    sample: RawSample, depth_kind: str, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one raw sample at its own size: (image H×W×3 uint8 RGB, labelIds H×W uint8, depth H×W float32 in the
    ``depth_kind`` encoding, 0 = invalid), checked (one-line errors name the file)."""
    import cv2

    bgr = read_png(sample.image, cv2.IMREAD_COLOR, "image")
    ids = read_png(sample.label, cv2.IMREAD_UNCHANGED, "label")
    disp = read_png(sample.disparity, cv2.IMREAD_UNCHANGED, "disparity", np.uint16)
    if ids.ndim != 2:
        raise DatasetError(f"{sample.label}: label image has {ids.shape[2]} channels, expected one (labelIds)")
    if ids.dtype != np.uint8:
        if ids.dtype == np.uint16 and int(ids.max()) <= 255:
            ids = ids.astype(np.uint8)
        else:
            raise DatasetError(f"{sample.label}: label image dtype {ids.dtype}, expected 8-bit labelIds")
    if disp.ndim != 2:
        raise DatasetError(f"{sample.disparity}: disparity has several channels, expected one 16-bit channel")
    if int(ids.max()) > CITYSCAPES_MAX_ID:
        bad = sorted(set(np.unique(ids).tolist()) - set(range(CITYSCAPES_MAX_ID + 1)))
        raise DatasetError(f"{sample.label}: label ids {bad[:10]} are outside the Cityscapes table (0..33)")
    shapes = {bgr.shape[:2], ids.shape, disp.shape}
    if len(shapes) != 1:
        raise DatasetError(
            f"{sample.stem}: image {bgr.shape[:2]}, label {ids.shape} and disparity {disp.shape} differ in size"
        )
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    baseline, focal = read_camera(sample.camera, scale) if depth_kind == "metric" else (BASELINE_M, FOCAL_PX)
    return rgb, ids, disparity_to_depth(disp, depth_kind, baseline, focal, scale)


def raw_tasks(samples: list[RawSample]) -> tuple[str, ...]:
    """The tasks raw samples hold: seg and depth, and normal when every sample has a normal file."""
    if samples and all(s.normal is not None for s in samples):
        return ("seg", "depth", "normal")
    return ("seg", "depth")


def read_normal_png(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A ``*_normal.png`` (16-bit RGB, each component n stored as round((n + 1)/2·65534) + 1, all three 0 where
    invalid) → H×W×3 float32 unit normals with zero vectors where invalid (decoded vectors renormalised)."""
    import cv2

    data = read_png(path, cv2.IMREAD_UNCHANGED, "normal", np.uint16)
    if data.ndim != 3 or data.shape[2] != 3:
        raise DatasetError(f"{path}: expected a 16-bit RGB normal image, got shape {data.shape}")
    if shape is not None and data.shape[:2] != shape:
        raise DatasetError(f"{path}: normals {data.shape[:2]} and labels {shape} differ in size")
    rgb = cv2.cvtColor(data, cv2.COLOR_BGR2RGB).astype(np.float64)
    valid = (rgb > 0).all(-1, keepdims=True)
    n = (rgb - 1) / 65534 * 2 - 1
    length = np.sqrt(np.square(n).sum(-1, keepdims=True))
    return np.where(valid & (length > 0), n / np.maximum(length, 1e-12), 0.0).astype(np.float32)


def read_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A ``*_gtFine_instanceIds.png`` → H×W int32 (labelId·1000 + k for instances, else the labelId)."""
    import cv2

    inst = read_png(path, cv2.IMREAD_UNCHANGED, "instance")
    if inst.ndim != 2 or inst.dtype not in (np.uint8, np.uint16, np.int32):
        raise DatasetError(f"{path}: expected a single-channel 16-bit instanceIds image")
    if inst.shape != shape:
        raise DatasetError(f"{path}: instanceIds {inst.shape} and labelIds {shape} differ in size")
    return inst.astype(np.int32)


def convert_raw_targets(
    sample: RawSample,
    height: int,
    width: int,
    num_classes: int,
    depth_kind: str,
    categories: str = "original",
    scale: float = 1.0,
    tasks: tuple[str, ...] = ("seg", "depth"),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read one raw sample's image and the targets of ``tasks``: (image H×W×3 uint8 RGB, {task: array}) at
    height×width: labels H×W uint8, depth H×W float32, normals H×W×3 float32 read from the sample's normal file,
    targets resized by the nearest pixel centre. ``categories``: the 7-class mapping
    (:func:`~crosstask_cli.data.labels.cityscapes_lookup`); ``scale``: see :func:`disparity_scale`."""
    rgb, ids, depth = read_raw_sample(sample, depth_kind, scale)
    labels = cityscapes_lookup(num_classes, categories)[ids]
    targets = {"seg": resize_nearest(labels, height, width), "depth": resize_nearest(depth, height, width)}
    if "normal" in tasks:
        if sample.normal is None:
            raise DatasetError(f"{sample.image}: no normal file for this sample (normal/…/{sample.stem}_normal.png)")
        targets["normal"] = resize_nearest(read_normal_png(sample.normal, ids.shape), height, width)
    return resize_image(rgb, height, width), {t: targets[t] for t in tasks}


def depth_meta(kind: str) -> dict:
    if kind == "inverse":
        return {"kind": "inverse", "unit": "inverse depth (disparity px / 256)", "max": INVERSE_DEPTH_MAX}
    return {"kind": "metric", "unit": "m", "max": METRIC_DEPTH_MAX}
