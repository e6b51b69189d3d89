"""The prediction file format, written by ``crosstask predict`` and read by ``eval --predictions`` and
``visualize predictions``: the one place that knows the file names, the encodings and the manifest.

For each input ``REL/STEM.EXT``: ``OUT/REL/STEM_seg.png`` (uint8 class ids), ``STEM_seg_color.png`` (palette
colours), ``STEM_depth.npy`` (float32 H×W, dataset depth units), ``STEM_depth_color.png``, at the input's size;
transferred predictions add ``_transfer`` after ``seg``/``depth``. ``OUT/predictions.json`` (the manifest) maps
each ``REL/STEM`` to its input file and records the checkpoint, class names, palette and depth kind.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosstask_cli.errors import DatasetError, InputError

MANIFEST = "predictions.json"
TRANSFER_TAG = "_transfer"


def seg_name(rel: str | Path, tag: str = "") -> str:
    return f"{rel}_seg{tag}.png"


def depth_name(rel: str | Path, tag: str = "") -> str:
    return f"{rel}_depth{tag}.npy"


def output_suffixes(tag: str = "") -> tuple[str, ...]:
    """Every file suffix one prediction writes for ``tag`` ('' for direct, ``TRANSFER_TAG`` for transferred)."""
    return (f"_seg{tag}.png", f"_seg{tag}_color.png", f"_depth{tag}.npy", f"_depth{tag}_color.png")


def encode_seg(labels: np.ndarray, palette: list[tuple[int, int, int]], tag: str = "") -> dict[str, bytes]:
    """H×W uint8 class ids → {suffix: PNG bytes} for the id map and its colour rendering."""
    from crosstask_cli.data.labels import colorize
    from crosstask_cli.images import encode_png

    return {f"_seg{tag}.png": encode_png(labels), f"_seg{tag}_color.png": encode_png(colorize(labels, palette))}


def encode_depth(depth: np.ndarray, depth_kind: str, tag: str = "") -> dict[str, bytes]:
    """H×W float32 depth (dataset units) → {suffix: bytes} for the .npy array and its colour rendering."""
    from crosstask_cli.colormaps import colorize_depth
    from crosstask_cli.images import encode_png

    buf = io.BytesIO()
    np.save(buf, depth.astype(np.float32, copy=False), allow_pickle=False)
    colour = encode_png(colorize_depth(depth, depth_kind, mark_invalid=False))
    return {f"_depth{tag}.npy": buf.getvalue(), f"_depth{tag}_color.png": colour}


def write_files(out: Path, rel: str | Path, files: dict[str, bytes]) -> None:
    """Write one prediction's files atomically (each appears whole or not at all)."""
    from crosstask_cli.atomic import atomic_write

    for suffix, data in files.items():
        atomic_write(out / f"{rel}{suffix}", lambda fh, d=data: fh.write(d))


@dataclass
class Manifest:
    """``predictions.json``: inputs maps ``REL/STEM`` → the input image's absolute path."""

    checkpoint: str
    transfer: bool
    depth_kind: str
    class_names: list[str]
    palette: list[list[int]]
    inputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "transfer": self.transfer,
            "inputs": self.inputs,
            "depth_kind": self.depth_kind,
            "class_names": self.class_names,
            "palette": self.palette,
        }


def write_manifest(out: Path, manifest: Manifest) -> None:
    """Write ``out/predictions.json``, keeping the inputs of an earlier manifest there (predict --force into it)."""
    from crosstask_cli.atomic import atomic_write

    path = out / MANIFEST
    if path.is_file():
        try:
            manifest.inputs = {**read_manifest(out).inputs, **manifest.inputs}
        except InputError:
            pass  # an unreadable old manifest is replaced
    atomic_write(path, lambda fh: fh.write(json.dumps(manifest.to_dict(), indent=2).encode()))


def read_manifest(pred_dir: Path) -> Manifest:
    """Read and check ``pred_dir/predictions.json``; one-line errors name the file and what is wrong."""
    path = Path(pred_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{pred_dir}: no {MANIFEST}; is this a folder written by `crosstask predict`?")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    keys = ("checkpoint", "transfer", "inputs", "depth_kind", "class_names", "palette")
    missing = [k for k in keys if not isinstance(d, dict) or k not in d]
    if missing:
        raise InputError(f"{path}: not a crosstask predictions manifest (missing {', '.join(missing)})")
    if not isinstance(d["inputs"], dict):
        raise InputError(f"{path}: 'inputs' must map prediction names to input files")
    return Manifest(
        d["checkpoint"], bool(d["transfer"]), d["depth_kind"], list(d["class_names"]), d["palette"], d["inputs"]
    )


def read_seg(path: Path) -> np.ndarray:
    """A ``*_seg*.png`` → H×W uint8 class ids."""
    import cv2

    if not Path(path).is_file():
        raise DatasetError(f"{path}: missing (no such prediction file)")
    seg = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if seg is None or seg.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel PNG of class ids")
    return seg


def read_depth(path: Path) -> np.ndarray:
    """A ``*_depth*.npy`` → H×W float32."""
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise DatasetError(f"{path}: expected an H×W depth array, got shape {depth.shape}")
    return depth.astype(np.float32, copy=False)


def read_prediction(
    pred_dir: Path, sample_id: str, height: int, width: int, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<id>_seg.png`` and ``<id>_depth.npy``, resized (nearest at pixel centres) to height×width.

    With ``num_classes``, a class id outside 0..C−1 is an error naming the file (every pixel must be predicted
    as a class); a depth that is not finite (NaN, inf) always is.
    """
    from crosstask_cli.data.resize import resize_nearest

    seg_path, depth_path = pred_dir / seg_name(sample_id), pred_dir / depth_name(sample_id)
    for p in (seg_path, depth_path):
        if not p.is_file():
            raise DatasetError(f"{p}: missing prediction for sample {sample_id!r}")
    seg, depth = read_seg(seg_path), read_depth(depth_path)
    if num_classes is not None and int(seg.max(initial=0)) >= num_classes:
        bad = sorted(int(v) for v in np.unique(seg[seg >= num_classes]))[:5]
        raise InputError(
            f"{seg_path}: class id(s) {bad} outside 0..{num_classes - 1}; the dataset has {num_classes} classes "
            "and every pixel must be predicted as one of them"
        )
    finite = np.isfinite(depth)
    if not finite.all():
        raise InputError(f"{depth_path}: {int((~finite).sum())} depth value(s) are NaN or infinite")
    return resize_nearest(seg, height, width), resize_nearest(depth, height, width)
