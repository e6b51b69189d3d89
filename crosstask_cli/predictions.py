"""The prediction file formats, written by ``crosstask predict`` and read by ``eval --predictions`` and
``visualize predictions``: the one place that knows the file names, the encodings and the manifest.

``crosstask`` format (the default), for each input ``REL/STEM.EXT``, each task's files (its spec's
``file_suffixes``): ``OUT/REL/STEM_seg.png`` (uint8 class ids), ``STEM_seg_color.png`` (palette colours),
``STEM_depth.npy`` (float32 H×W, dataset depth units), ``STEM_depth_color.png`` (the colour renderings:
indexed-colour PNGs, see :func:`crosstask_cli.images.with_palette`), ``STEM_normal.npy`` (float32 H×W×3 unit
vectors) and ``STEM_normal_color.png`` (RGB = (n + 1)/2), at the input's size; transferred predictions add
``_transfer`` after the task's name (``_transfer_from_<source>`` for pairs other than the original's two).
With ``--energy`` also ``STEM_energy.npy`` (float32 H×W, combined consistency energy) and
``STEM_energy_color.png``. ``cityscapes`` format: only ``OUT/REL/STEM_labelIds.png`` (uint8 Cityscapes labelIds, input's size), what the
official evaluator and benchmark server read. ``OUT/predictions.json`` (the manifest) maps each ``REL/STEM`` to
its input file and records the format, checkpoint, class names, palette and depth kind.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crosstask_cli.errors import DatasetError, InputError

if TYPE_CHECKING:  # NumPy is imported where files are encoded or read: predict's options read this module's names
    import numpy as np

MANIFEST = "predictions.json"
TRANSFER_TAG = "_transfer"
FORMATS = ("crosstask", "cityscapes")
LABEL_IDS_SUFFIX = "_labelIds.png"
# The official matcher's key: a prediction file belongs to ground truth <city>_<seq>_<frame>_gtFine_labelIds.png
# when its name starts with <city>_<seq>_<frame> (seq and frame six digits).
CITYSCAPES_KEY = re.compile(r"[A-Za-z][A-Za-z-]*_\d{6}_\d{6}")


ENERGY_SUFFIXES = ("_energy.npy", "_energy_color.png")


def energy_name(rel: str | Path) -> str:
    return f"{rel}_energy.npy"


def encode_energy(energy: np.ndarray) -> dict[str, bytes]:
    """H×W float32 combined consistency energy → {suffix: bytes}: the .npy array and a colour rendering (magma,
    0 to the image's 99th percentile: it shows *where* in an image energy is high; the arrays and the manifest's
    per-image values compare images)."""
    import numpy as np

    from crosstask_cli.colormaps import depth_palette, unit_indices
    from crosstask_cli.images import encode_png, with_palette

    buf = io.BytesIO()
    np.save(buf, energy.astype(np.float32, copy=False), allow_pickle=False)
    top = float(np.percentile(energy, 99)) if energy.size else 0.0
    index = unit_indices(energy / top if top > 0 else np.zeros_like(energy))
    return {ENERGY_SUFFIXES[0]: buf.getvalue(), ENERGY_SUFFIXES[1]: with_palette(encode_png(index), depth_palette())}


def encode_label_ids(labels: np.ndarray, num_classes: int) -> dict[str, bytes]:
    """H×W uint8 class ids of a Cityscapes model (7 or 19 classes) → {suffix: PNG bytes} of the labelIds map."""

    from crosstask_cli.data.labels import class_to_label_id
    from crosstask_cli.images import encode_png

    return {LABEL_IDS_SUFFIX: encode_png(class_to_label_id(num_classes)[labels])}


def encode_seg(labels: np.ndarray, palette: list[tuple[int, int, int]], tag: str = "") -> dict[str, bytes]:
    """H×W uint8 class ids → {suffix: PNG bytes} for the id map and its colour rendering (the same compressed
    pixels with the palette attached: an indexed-colour PNG; ids past the palette, e.g. 255, are black)."""
    import numpy as np

    from crosstask_cli.images import encode_png, with_palette

    ids = encode_png(labels)
    return {f"_seg{tag}.png": ids, f"_seg{tag}_color.png": with_palette(ids, np.asarray(palette, np.uint8))}


def encode_depth(depth: np.ndarray, depth_kind: str, tag: str = "") -> dict[str, bytes]:
    """H×W float32 depth (dataset units) → {suffix: bytes} for the .npy array and its colour rendering (magma,
    bright = near, an indexed-colour PNG)."""
    import numpy as np

    from crosstask_cli.colormaps import depth_indices, depth_palette
    from crosstask_cli.images import encode_png, with_palette

    buf = io.BytesIO()
    np.save(buf, depth.astype(np.float32, copy=False), allow_pickle=False)
    colour = with_palette(encode_png(depth_indices(depth, depth_kind)), depth_palette())
    return {f"_depth{tag}.npy": buf.getvalue(), f"_depth{tag}_color.png": colour}


def write_files(out: Path, rel: str | Path, files: dict[str, bytes]) -> None:
    """Write one prediction's files atomically (each appears whole or not at all)."""
    from crosstask_cli.atomic import atomic_write

    for suffix, data in files.items():
        atomic_write(out / f"{rel}{suffix}", lambda fh, d=data: fh.write(d))


@dataclass
class Manifest:
    """``predictions.json``: inputs maps ``REL/STEM`` → the input image's absolute path; ``format``: one of
    :data:`FORMATS` (manifests without it are ``crosstask``)."""

    checkpoint: str
    transfer: bool
    depth_kind: str
    class_names: list[str]
    palette: list[list[int]]
    inputs: dict[str, str] = field(default_factory=dict)
    format: str = "crosstask"
    energy: dict[str, float] | None = None  # predict --energy: REL/STEM → mean combined energy of the image
    tasks: list[str] | None = None  # the tasks predicted (manifests without it: seg and depth)
    transferred: list[list[str]] | None = None  # the (source, target) pairs written with --transfer

    def to_dict(self) -> dict:
        extra = {} if self.energy is None else {"energy": self.energy}
        extra |= {k: v for k, v in (("tasks", self.tasks), ("transferred", self.transferred)) if v is not None}
        return extra | {
            "format": self.format,
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
            old = read_manifest(out)
        except InputError:
            old = None  # an unreadable old manifest is replaced
        if old is not None and old.format == manifest.format:  # one folder holds one format
            manifest.inputs = {**old.inputs, **manifest.inputs}
            if old.energy and manifest.energy is not None:
                manifest.energy = {**old.energy, **manifest.energy}
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
    fmt = d.get("format", "crosstask")
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown prediction format {fmt!r} (expected one of {', '.join(FORMATS)})")
    energy = d.get("energy")
    if energy is not None and not isinstance(energy, dict):
        raise InputError(f"{path}: 'energy' must map prediction names to numbers")
    tasks, transferred = d.get("tasks", ["seg", "depth"]), d.get("transferred")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise InputError(f"{path}: 'tasks' must list the predicted tasks")
    if transferred is None:  # earlier versions wrote the original's two transferred predictions with --transfer
        transferred = [["depth", "seg"], ["seg", "depth"]] if d["transfer"] else []
    if not isinstance(transferred, list) or not all(isinstance(p, list) and len(p) == 2 for p in transferred):
        raise InputError(f"{path}: 'transferred' must list [source, target] pairs")
    return Manifest(
        d["checkpoint"], bool(d["transfer"]), d["depth_kind"], list(d["class_names"]), d["palette"], d["inputs"], fmt,
        energy, tasks, transferred,
    )  # fmt: skip


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
    import numpy as np

    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise DatasetError(f"{path}: expected an H×W depth array, got shape {depth.shape}")
    return depth.astype(np.float32, copy=False)


@dataclass
class PredictionFiles:
    """The prediction files found for a list of sample ids: ``files`` maps each task with files to {id: file}
    (``seg``/``depth`` read them for those two, None for a task with no files at all); ``format``: how the
    segmentation files are encoded."""

    format: str
    files: dict[str, dict[str, Path]]

    @property
    def seg(self) -> dict[str, Path] | None:
        return self.files.get("seg")

    @property
    def depth(self) -> dict[str, Path] | None:
        return self.files.get("depth")

    @property
    def tasks(self) -> list[str]:
        return list(self.files)


DEFAULT_SUFFIXES = {"seg": "_seg.png", "depth": "_depth.npy"}  # the file each task is scored from (crosstask format)


def _seg_suffix(fmt: str, manifest: Manifest | None) -> str:
    if fmt == "crosstask":
        return "_seg.png"
    # predict's labelIds files; without its manifest, any tool's PNGs, as the official matcher takes them
    return LABEL_IDS_SUFFIX if manifest is not None else ".png"


def _candidate_stems(pred_dir: Path, fmt: str, manifest: Manifest | None, suffixes) -> list[str]:
    """Relative stems ``REL/STEM`` of the predictions in ``pred_dir``: the manifest's, else the files'."""
    if manifest is not None:
        return sorted(manifest.inputs)
    found = set()
    for suffix in list(suffixes.values()) if fmt == "crosstask" else [".png"]:
        for f in pred_dir.rglob(f"*{suffix}"):
            rel = f.relative_to(pred_dir).as_posix()
            if not any(part.startswith(".") for part in Path(rel).parts):
                found.add(rel[: -len(suffix)])
    return sorted(found)


def _detect_format(pred_dir: Path, suffixes) -> str:
    """Without a manifest: ``crosstask`` if any task's file (``*_seg.png``, ``*_depth.npy``, …) is there, else
    ``cityscapes``."""
    for suffix in suffixes.values():
        if next(pred_dir.rglob(f"*{suffix}"), None) is not None:
            return "crosstask"
    return "cityscapes"


def match_predictions(pred_dir: Path, ids: list[str], suffixes: dict[str, str] | None = None) -> PredictionFiles:
    """Find each sample id's prediction files in ``pred_dir`` (a ``predict`` output, either format, or any folder
    of files named as the formats name them). ``suffixes``: task → the suffix of its scored file in the crosstask
    format (default seg and depth; the cityscapes format holds segmentation only). A sample matches the
    prediction whose relative stem is its id, or whose file name is the id; else the one whose file name starts
    with the same official ``city_seq_frame`` key. A task is scored when any sample has its file; then every
    sample needs one. Errors name the missing file, or both files when two predictions match one sample."""
    pred_dir = Path(pred_dir)
    suffixes = dict(suffixes or DEFAULT_SUFFIXES)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: not a directory of predictions")
    manifest = read_manifest(pred_dir) if (pred_dir / MANIFEST).is_file() else None
    fmt = manifest.format if manifest is not None else _detect_format(pred_dir, suffixes)
    stems = _candidate_stems(pred_dir, fmt, manifest, suffixes)
    stem_set = set(stems)
    by_name: dict[str, list[str]] = {}
    by_key: dict[str, list[str]] = {}
    for s in stems:
        name = s.rsplit("/", 1)[-1]
        by_name.setdefault(name, []).append(s)
        key = CITYSCAPES_KEY.match(name)
        if key:
            by_key.setdefault(key.group(0), []).append(s)

    def find(sample_id: str) -> str | None:
        if sample_id in stem_set:
            return sample_id
        for table, key in ((by_name, sample_id), (by_key, (CITYSCAPES_KEY.fullmatch(sample_id) or [None])[0])):
            hits = table.get(key, []) if key else []
            if len(hits) > 1:
                raise InputError(f"{pred_dir}: several predictions match sample {sample_id!r}: {', '.join(hits[:3])}")
            if hits:
                return hits[0]
        return None

    matched = {i: find(i) for i in ids}
    if fmt != "crosstask":
        suffixes = {"seg": _seg_suffix(fmt, manifest)}
    found: dict[str, dict[str, Path]] = {}
    for task, suffix in suffixes.items():
        files = {i: pred_dir / f"{m}{suffix}" for i, m in matched.items() if m is not None}
        present = {i: f for i, f in files.items() if f.is_file()}
        if not present:
            continue
        missing = [i for i in ids if i not in present]
        if missing:
            where = files.get(missing[0]) or pred_dir / f"{missing[0]}{suffix}"
            raise DatasetError(
                f"{where}: missing {task} prediction for sample {missing[0]!r} ({len(missing)} of {len(ids)} samples "
                f"have none; the others have one)"
            )
        found[task] = present
    if not found:
        expected = (
            f"<id>{LABEL_IDS_SUFFIX}" if fmt == "cityscapes" else " / ".join(f"<id>{x}" for x in suffixes.values())
        )
        example = f" (first sample: {ids[0]!r})" if ids else ""
        raise DatasetError(f"{pred_dir}: no prediction files for the evaluated samples{example}; expected {expected}")
    return PredictionFiles(fmt, found)


def read_seg_prediction(path: Path, fmt: str, lookup: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """One segmentation prediction → height×width uint8 class ids (nearest at pixel centres). ``cityscapes``
    files hold labelIds, turned into class ids by ``lookup`` (labelId → class, 255 for labels not evaluated).
    Ids outside the classes are kept: the metrics count them as misses."""
    import numpy as np

    from crosstask_cli.data.resize import resize_nearest

    seg = read_seg(path)
    if seg.dtype != np.uint8:
        if np.issubdtype(seg.dtype, np.integer) and int(seg.max(initial=0)) <= 255:
            seg = seg.astype(np.uint8)
        else:
            raise InputError(f"{path}: {seg.dtype} values above 255; expected 8-bit class ids or labelIds")
    if fmt == "cityscapes":
        if lookup is None:
            raise InputError(f"{path}: Cityscapes labelIds can only be evaluated on a Cityscapes-label dataset")
        seg = lookup[seg]
    return resize_nearest(seg, height, width)


def read_depth_prediction(path: Path, height: int, width: int) -> np.ndarray:
    """One depth prediction → height×width float32 (nearest at pixel centres); non-finite values are an error."""
    import numpy as np

    from crosstask_cli.data.resize import resize_nearest

    depth = read_depth(path)
    finite = np.isfinite(depth)
    if not finite.all():
        raise InputError(f"{path}: {int((~finite).sum())} depth value(s) are NaN or infinite")
    return resize_nearest(depth, height, width)
