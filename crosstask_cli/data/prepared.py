"""Prepared dataset format, version 1: memory-mapped arrays plus meta.json (README "Formats").

    DIR/meta.json
    DIR/{split}/images.npy   uint8   N×H×W×3 RGB
    DIR/{split}/labels.npy   uint8   N×H×W   0..C−1, 255 = ignore                        (task seg)
    DIR/{split}/depth.npy    float32 N×H×W   dataset depth units, 0 = invalid            (task depth)
    DIR/{split}/normals.npy  float32 N×H×W×3 unit normals, zero vector = invalid        (task normal)
    DIR/{split}/files.txt    one source id per line

One array per task, as its spec (:mod:`crosstask_cli.tasks`) names it; ``meta.json`` lists the tasks a dataset has
(``tasks``; a dataset without the list has seg and depth, as every dataset of earlier versions) and each array's
dtype and invalid marker (``targets``).

Writing happens in a temporary sibling directory that is renamed into place only when complete, so an
interrupted prepare never leaves a half-written dataset, and ``--force`` never loses the old one early.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosstask_cli.atomic import replace_dir, temp_dir_beside
from crosstask_cli.data.labels import IGNORE_INDEX
from crosstask_cli.errors import DatasetError
from crosstask_cli.tasks import LEGACY_TASKS, TaskContext, get_task, ordered

FORMAT = "crosstask-prepared"
VERSION = 1


def is_prepared(path: Path) -> bool:
    from crosstask_cli.outputs import made_by_crosstask

    return made_by_crosstask(Path(path), "prepared dataset")


META_KEYS = ("dataset", "num_classes", "class_names", "palette", "depth", "height", "width", "splits")


@dataclass(frozen=True)
class DatasetMeta:
    """A prepared dataset's ``meta.json`` (format v1), typed. ``depth_kind``: ``inverse`` or ``metric``."""

    dataset: str
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    depth: dict  # {"kind", "unit", "max"}
    height: int
    width: int
    splits: dict[str, int]
    ignore_index: int = IGNORE_INDEX
    source: str | None = None
    created_by: str | None = None
    categories: str | None = None  # Cityscapes 7 classes: "original" or "official" (labels.cityscapes_lookup)
    tasks: tuple[str, ...] = LEGACY_TASKS  # the tasks whose targets the dataset holds

    @property
    def depth_kind(self) -> str:
        return self.depth["kind"]

    @property
    def context(self) -> TaskContext:
        """What the task specs need to know of this dataset."""
        return TaskContext.from_meta(self)

    @property
    def depth_unit(self) -> str:
        return self.depth.get("unit") or ""

    @classmethod
    def from_dict(cls, meta: dict, where: str = "meta.json") -> DatasetMeta:
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise DatasetError(f"{where}: incomplete dataset description (missing {', '.join(missing)})")
        if not isinstance(meta["splits"], dict) or not isinstance(meta["depth"], dict) or "kind" not in meta["depth"]:
            raise DatasetError(f"{where}: 'splits' must map split names to sizes and 'depth' must give its 'kind'")
        tasks = meta.get("tasks", list(LEGACY_TASKS))
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise DatasetError(f'{where}: \'tasks\' must list the dataset\'s tasks, e.g. ["seg", "depth"]')
        try:
            tasks = ordered(tasks)
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        try:
            return cls(
                dataset=str(meta["dataset"]),
                num_classes=int(meta["num_classes"]),
                class_names=[str(n) for n in meta["class_names"]],
                palette=[list(map(int, c)) for c in meta["palette"]],
                depth=dict(meta["depth"]),
                height=int(meta["height"]),
                width=int(meta["width"]),
                splits={str(k): int(v) for k, v in meta["splits"].items()},
                ignore_index=int(meta.get("ignore_index", IGNORE_INDEX)),
                source=meta.get("source"),
                created_by=meta.get("created_by"),
                categories=meta.get("categories"),
                tasks=tasks,
            )
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: a value has the wrong type ({exc})") from exc


def read_meta(path: Path) -> DatasetMeta:
    """``path/meta.json``, checked: format, version, and the keys and types every reader relies on."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(f"{path}: not a prepared dataset (no meta.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise DatasetError(f"{meta_file}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DatasetError(f"{meta_file}: format is {found!r}, expected {FORMAT!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise DatasetError(
            f"{meta_file}: prepared format version {meta['version']} is newer than this crosstask "
            f"understands ({VERSION}); upgrade crosstask"
        )
    return DatasetMeta.from_dict(meta, str(meta_file))


@dataclass
class PreparedSplit:
    """One split of a prepared dataset, arrays memory-mapped read-only; ``targets`` maps each task of the dataset
    to its array (``labels``/``depth`` are the seg and depth ones, None where the dataset lacks them)."""

    root: Path
    name: str
    images: np.ndarray
    targets: dict[str, np.ndarray]
    files: list[str]

    @property
    def labels(self) -> np.ndarray | None:
        return self.targets.get("seg")

    @property
    def depth(self) -> np.ndarray | None:
        return self.targets.get("depth")

    def __len__(self) -> int:
        return len(self.files)


SAMPLE_CHECKS = 16  # samples whose values every opening checks (spread over the split)


def array_shape(task: str, n: int, height: int, width: int) -> tuple[int, ...]:
    """The shape of a task's prepared array: N×H×W, or N×H×W×C for a task with vector targets (normals)."""
    channels = get_task(task).array_channels
    return (n, height, width, channels) if channels else (n, height, width)


def open_split(root: Path, split: str) -> PreparedSplit:
    """Memory-map one split after the cheap checks: meta.json, dtypes, shapes, files.txt (its line count and
    ids). Values are checked by :func:`verify_split`."""
    root = Path(root)
    meta = read_meta(root)
    if split not in meta.splits:
        raise DatasetError(f"{root}: no split {split!r}; available: {', '.join(meta.splits)}")
    d = root / split
    n = meta.splits[split]
    h, w = meta.height, meta.width
    arrays = {"images": ("images", np.uint8, (n, h, w, 3))}
    for t in meta.tasks:
        spec = get_task(t)
        arrays[t] = (spec.array, np.dtype(spec.dtype), array_shape(t, n, h, w))
    loaded = {}
    try:
        for key, (name, _, _) in arrays.items():
            loaded[key] = np.load(d / f"{name}.npy", mmap_mode="r")
        files = (d / "files.txt").read_text().split("\n")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{d}: cannot read prepared split ({exc})") from exc
    if files and files[-1] == "":
        files.pop()  # the final line break
    for key, (name, dtype, shape) in arrays.items():
        arr = loaded[key]
        if arr.dtype != dtype:
            raise DatasetError(
                f"{d / (name + '.npy')}: dtype {arr.dtype}, the prepared format stores {np.dtype(dtype)}"
                + (" (images are bytes 0..255, not floats in [0, 1])" if name == "images" else "")
            )
        if arr.shape != shape:
            raise DatasetError(f"{d / (name + '.npy')}: shape {arr.shape}, meta.json says {shape}")
    if len(files) != n:
        raise DatasetError(f"{d / 'files.txt'}: {len(files)} lines, expected {n}")
    if any("\r" in f or not f for f in files):
        raise DatasetError(f"{d / 'files.txt'}: empty lines or carriage returns among the sample ids")
    images = loaded.pop("images")
    return PreparedSplit(root, split, images, loaded, files)


def verify_split(s: PreparedSplit, meta: DatasetMeta, full: bool = False, chunk: int = 32) -> None:
    """Check the values of every task's array (its spec's check: labels in 0..C−1 or the ignore index, depth
    finite and ≥ 0, normals finite unit vectors or zero). ``full`` checks every sample (reads the whole split);
    otherwise :data:`SAMPLE_CHECKS` samples spread over it. The first violation is raised as one line naming the
    file and the sample."""
    n = len(s)
    if n == 0:
        return
    if full:
        blocks = [range(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    else:
        blocks = [sorted(set(np.linspace(0, n - 1, min(n, SAMPLE_CHECKS)).round().astype(int).tolist()))]
    ctx = meta.context
    d = s.root / s.name
    for block in blocks:
        idx = list(block)
        for task, array in s.targets.items():
            spec = get_task(task)
            values = np.asarray(array[idx[0] : idx[-1] + 1] if full else array[idx])
            problem = spec.check_array(values, ctx)
            if problem is not None:
                i = idx[problem[0]]
                raise DatasetError(f"{d / (spec.array + '.npy')}: sample {i} ({s.files[i]}) {problem[1]}")


def sample_bytes_per_pixel(tasks) -> int:
    """Bytes one pixel of a sample takes in the prepared arrays (RGB and each task's target)."""
    return 3 + sum(np.dtype(get_task(t).dtype).itemsize * max(get_task(t).array_channels, 1) for t in tasks)


def check_ids(ids: list[str], where: object) -> None:
    """Sample ids go one per line into ``files.txt``: refuse those the format cannot store, naming them."""
    for i in ids:
        if not i or any(c in i for c in "\n\r\x00") or i != i.strip():
            where = str(where)
            where = repr(where) if any(c in where for c in "\n\r\x00") else where  # the message stays one line
            raise DatasetError(
                f"{where}: the file name {i!r} cannot be stored in a prepared dataset (empty, line breaks, NUL or "
                "surrounding spaces); rename it"
            )


def _allocate(path: Path, shape: tuple[int, ...], dtype) -> None:
    """Create the .npy file ``path`` with every data block allocated on disk now.

    Writes into a memory map of a sparse file meet a full disk as SIGBUS, which kills the process with no message
    and leaves the temporary folder behind; allocating up front turns that into an ``ENOSPC`` error here.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        size = f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
        f.flush()
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            f.truncate(size)  # no fallocate on this filesystem: the upfront free-space check must do


class PreparedWriter:
    """Writes a prepared dataset atomically.

    Usage::

        with PreparedWriter(out, force=False) as w:
            arrays = w.new_split("train", n, h, w)   # dict of writable memmaps
            ...fill arrays["images"][i] etc...
            w.finish_split("train", files)
            w.write_meta(meta)
        # renamed into place here; on an exception the temporary directory is removed.
    """

    def __init__(self, out: Path, force: bool = False, inputs: dict | None = None) -> None:
        self.out = Path(out)
        self.force = force
        self.inputs = inputs or {}  # option name → input path: an --out that is or holds one is refused
        self.splits: dict[str, int] = {}
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self.tmp: Path | None = None
        self.lock = None  # the output folder's lock (crosstask_cli.locks.lock_output), held until __exit__

    def __enter__(self) -> PreparedWriter:
        from crosstask_cli.locks import lock_output
        from crosstask_cli.outputs import check_output_dir

        self.out = check_output_dir(self.out, "prepared dataset", "--out", self.force, self.inputs)
        self.lock = lock_output(self.out)
        try:  # checked again under the lock: a process that held it may have finished the folder meanwhile
            check_output_dir(self.out, "prepared dataset", "--out", self.force, self.inputs)
            self.tmp = temp_dir_beside(self.out)
        except PermissionError as exc:
            self.lock.release()
            raise PermissionError(
                f"{self.out.parent}: permission denied, cannot write the prepared dataset there"
            ) from exc
        except BaseException:
            self.lock.release()
            raise
        return self

    def reserve(self, sizes: dict[str, int], height: int, width: int, tasks=LEGACY_TASKS) -> None:
        """Refuse up front when the splits' arrays (``sizes``: split → samples) cannot fit on the output's disk."""
        assert self.tmp is not None
        need = sum(sizes.values()) * height * width * sample_bytes_per_pixel(tasks) + 64 * 1024
        free = shutil.disk_usage(self.tmp).free
        if need > free:
            raise OSError(
                errno.ENOSPC,
                f"{self.out}: preparing needs about {need / 2**20:.1f} MiB but {free / 2**20:.1f} MiB are free on "
                "that disk; nothing was written",
            )

    def new_split(self, split: str, n: int, height: int, width: int, tasks=LEGACY_TASKS) -> dict[str, np.ndarray]:
        """Writable memory maps of one split: ``images`` and one array per task, by the spec's array name
        (``labels``, ``depth``, ``normals``)."""
        assert self.tmp is not None
        d = self.tmp / split
        d.mkdir()
        fmt = np.lib.format.open_memmap
        arrays = {}
        layout = [("images", np.uint8, (n, height, width, 3))]
        layout += [(get_task(t).array, np.dtype(get_task(t).dtype), array_shape(t, n, height, width)) for t in tasks]
        for name, dtype, shape in layout:
            path = d / f"{name}.npy"
            _allocate(path, shape, dtype)
            arrays[name] = fmt(path, mode="r+")
        self._arrays[split] = arrays
        return arrays

    def finish_split(self, split: str, files: list[str]) -> None:
        assert self.tmp is not None
        arrays = self._arrays.pop(split)
        n = arrays["images"].shape[0]
        if len(files) != n:
            raise DatasetError(f"split {split}: {len(files)} ids for {n} samples")
        check_ids(files, f"split {split}")
        for arr in arrays.values():
            arr.flush()
        del arrays
        (self.tmp / split / "files.txt").write_text("".join(f"{f}\n" for f in files))
        self.splits[split] = n

    def write_meta(self, meta: dict) -> None:
        """``meta.json``: the given description, the splits and, for the tasks listed in ``meta["tasks"]`` (seg and
        depth when absent), each array's file, dtype and invalid marker."""
        assert self.tmp is not None
        tasks = meta.get("tasks", list(LEGACY_TASKS))
        targets = {t: {"array": f"{get_task(t).array}.npy", "dtype": get_task(t).dtype, "invalid": get_task(t).invalid}
                   for t in tasks}  # fmt: skip
        meta = {"format": FORMAT, "version": VERSION, **meta, "tasks": list(tasks), "targets": targets,
                "splits": dict(self.splits)}  # fmt: skip
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._close(exc_type, exc)
        finally:
            self.lock.release()

    def _close(self, exc_type, exc) -> None:
        assert self.tmp is not None
        self._arrays.clear()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and str(self.out) not in str(exc):
                raise OSError(
                    errno.ENOSPC, f"{self.out}: no space left on device while preparing; nothing was written"
                ) from exc
            return
        if not (self.tmp / "meta.json").is_file():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise RuntimeError("PreparedWriter closed without write_meta(); nothing was written")
        replace_dir(self.tmp, self.out)
