"""``crosstask prepare``: turn a dataset as users hold it into the prepared format (atomically).

Progress is reported through an optional ``progress(description, total)`` factory returning an
``advance(n)`` callable, so the CLI can draw Rich bars while the API stays UI-free.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosstask_cli import __version__
from crosstask_cli.atomic import replace_dir, temp_dir_beside
from crosstask_cli.data import cityscapes as cs
from crosstask_cli.data.datasets import dataset_info, dataset_names, known_or_default
from crosstask_cli.data.labels import CATEGORY_MAPPINGS, class_info
from crosstask_cli.data.mtan import MTAN_SPLITS, convert_mtan_targets, has_normals, is_mtan_layout, mtan_indices
from crosstask_cli.data.prepare_options import PrepareOptions
from crosstask_cli.data.prepared import (
    DatasetError,
    DatasetMeta,
    PreparedWriter,
    check_ids,
    is_prepared,
    read_meta,
)
from crosstask_cli.errors import ConfigError
from crosstask_cli.outputs import CACHE_FOLDER  # DATA/.crosstask/<H>x<W>-c<C>: prepared copies of raw data

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def detect_layout(src: Path) -> str:
    """'prepared', 'cityscapes-raw', 'cityscapes-mtan' or 'nyu-mtan'; DatasetError listing the layouts otherwise."""
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src}: no such directory")
    if not src.is_dir():
        raise DatasetError(f"{src}: is a file, expected a dataset directory")
    if is_prepared(src):
        return "prepared"
    if cs.is_raw_layout(src):
        return "cityscapes-raw"
    if is_mtan_layout(src, ("label_7", "label_19")):
        return "cityscapes-mtan"
    if is_mtan_layout(src, ("label",)):
        return "nyu-mtan"
    raise DatasetError(
        f"{src}: matches no known dataset layout; expected Cityscapes raw (leftImg8bit/{{train,val}}/<city>/*_leftImg8bit.png "
        "+ gtFine/…/*_gtFine_labelIds.png + disparity/…/*_disparity.png), MTAN CityScapes "
        "({train,val}/{image,label_7,label_19,depth}/<i>.npy), MTAN NYUv2 ({train,val}/{image,label,depth,normal}/<i>.npy) "
        "or a prepared dataset (meta.json + <split>/{images,labels,depth}.npy)"
    )


def _holdout(ids: list, n: int, seed: int, src: Path) -> tuple[list[int], list[int]]:
    if n < 0 or n >= len(ids):
        raise DatasetError(f"{src}: --val-from-train {n} must be between 0 and {len(ids) - 1} (train has {len(ids)})")
    order = np.random.default_rng(seed).permutation(len(ids))
    held = sorted(order[:n].tolist())
    keep = sorted(order[n:].tolist())
    return keep, held


def _write_splits(
    writer: PreparedWriter,
    plan: dict[str, list],
    convert: Callable[[object], tuple[np.ndarray, dict[str, np.ndarray]]],
    ident: Callable[[object], str],
    opts: PrepareOptions,
    progress: ProgressFactory,
    tasks: tuple[str, ...] = ("seg", "depth"),
) -> None:
    """Convert every sample of ``plan`` (split → items; ``convert`` gives (image, {task: array})) into the
    writer's arrays, one array per task."""
    from crosstask_cli.tasks import get_task

    ids = {split: [ident(x) for x in items] for split, items in plan.items()}
    for split, items in plan.items():
        for x, i in zip(items, ids[split], strict=True):
            check_ids([i], getattr(x, "image", None) or writer.inputs.get("--src", "the source"))
    writer.reserve({split: len(items) for split, items in plan.items()}, opts.height, opts.width, tasks)
    for split, items in plan.items():
        arrays = writer.new_split(split, len(items), opts.height, opts.width, tasks)
        advance = progress(f"{split}", len(items))
        with ThreadPoolExecutor(max(1, opts.workers)) as pool:
            for i, (img, targets) in enumerate(pool.map(convert, items)):
                arrays["images"][i] = img
                for t in tasks:
                    arrays[get_task(t).array][i] = targets[t]
                advance(1)
        writer.finish_split(split, ids[split])


def _split_plan(splits: dict[str, list], opts: PrepareOptions, src: Path) -> dict[str, list]:
    if not splits.get("train"):
        raise DatasetError(f"{src}: no training samples found")
    if not splits.get("val"):
        raise DatasetError(f"{src}: no validation samples found (the evaluation split 'val')")
    plan = dict(splits)
    if opts.val_from_train:
        keep, held = _holdout(plan["train"], opts.val_from_train, opts.seed, src)
        train = plan["train"]
        plan["train"] = [train[i] for i in keep]
        plan["holdout"] = [train[i] for i in held]
    return plan


# The folders a dataset's files live in (Cityscapes raw; MTAN's splits): other things kept beside them, such as
# crosstask's cache or a run directory, do not make the data change.
SOURCE_FOLDERS = ("leftImg8bit", "gtFine", "disparity", "camera", "normal", "train", "val")


def source_fingerprint(src: Path) -> str:
    """A digest of the dataset files under ``src`` (relative names, sizes, modification times, in
    :data:`SOURCE_FOLDERS`): it changes when a source file is added, removed, replaced or edited."""
    import hashlib

    src = Path(src)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(src):
        if Path(dirpath) == src:
            dirnames[:] = sorted(d for d in dirnames if d in SOURCE_FOLDERS)
            continue
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(src).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _base_meta(dataset: str, num_classes: int, opts: PrepareOptions, src: Path, layout: str) -> dict:
    names, palette = class_info(dataset, num_classes)
    return {
        "dataset": dataset,
        "num_classes": num_classes,
        "class_names": names,
        "palette": [list(c) for c in palette],
        "ignore_index": 255,
        "height": opts.height,
        "width": opts.width,
        "source": {"path": str(Path(src).resolve()), "layout": layout, "fingerprint": source_fingerprint(src)},
        "created_by": f"crosstask {__version__}",
    }


def prepare_cityscapes(
    src: Path, out: Path, opts: PrepareOptions, progress: ProgressFactory = _no_progress, dataset: str = "cityscapes"
) -> Path:
    """Official raw or MTAN-preprocessed Cityscapes → prepared dataset at ``out``."""
    src, out = Path(src), Path(out)
    layout = detect_layout(src)
    if opts.num_classes not in (7, 19):
        raise DatasetError(f"Cityscapes has 7 or 19 classes, got --num-classes {opts.num_classes}")
    if opts.categories not in CATEGORY_MAPPINGS:
        raise ConfigError(f"--categories must be one of {', '.join(CATEGORY_MAPPINGS)}, got {opts.categories!r}")
    if opts.categories != "original" and opts.num_classes != 7:
        raise ConfigError("--categories chooses the 7-class mapping; with --num-classes 19 the official trainIds apply")
    if opts.categories != "original" and layout == "cityscapes-mtan":
        raise DatasetError(
            f"{src}: MTAN's label_7 holds the original category mapping; --categories {opts.categories} needs the "
            "official raw layout (gtFine labelIds)"
        )
    if layout == "cityscapes-raw":
        plan = _split_plan({s: cs.find_raw_samples(src, s) for s in cs.RAW_SPLITS}, opts, src)
        scale = cs.disparity_scale(src)
        tasks = cs.raw_tasks([x for items in plan.values() for x in items])
        convert = lambda s: cs.convert_raw_targets(  # noqa: E731
            s, opts.height, opts.width, opts.num_classes, opts.depth, opts.categories, scale, tasks
        )
        ident = lambda s: s.stem  # noqa: E731
        depth = cs.depth_meta(opts.depth)
    elif layout == "cityscapes-mtan":
        if opts.depth != "inverse":
            raise DatasetError(f"{src}: MTAN CityScapes holds inverse depth only; --depth metric needs the raw layout")
        label_dir = f"label_{opts.num_classes}"
        plan = _split_plan({s: [(s, i) for i in mtan_indices(src, s, label_dir)] for s in MTAN_SPLITS}, opts, src)
        tasks = ("seg", "depth")
        convert = lambda x: convert_mtan_targets(  # noqa: E731
            src, x[0], x[1], label_dir, opts.num_classes, opts.height, opts.width
        )
        ident = lambda x: f"{x[0]}/{x[1]}"  # noqa: E731
        depth = cs.depth_meta("inverse")
    else:
        raise DatasetError(f"{src}: layout {layout!r} is not Cityscapes (expected the raw or the MTAN layout)")
    with PreparedWriter(out, force=opts.force, inputs={"--src": src}) as writer:
        _write_splits(writer, plan, convert, ident, opts, progress, tasks)
        meta = {**_base_meta(dataset, opts.num_classes, opts, src, layout), "depth": depth, "tasks": list(tasks)}
        if opts.num_classes == 7:
            meta["categories"] = opts.categories
        writer.write_meta(meta)
    return out


def prepare_nyu(src: Path, out: Path, opts: PrepareOptions, progress: ProgressFactory = _no_progress) -> Path:
    """MTAN's preprocessed NYUv2 (13 classes, metres, and the surface normals of ``normal/`` where the folders
    exist) → prepared dataset at ``out``."""
    src, out = Path(src), Path(out)
    layout = detect_layout(src)
    if layout != "nyu-mtan":
        raise DatasetError(
            f"{src}: expected MTAN's NYUv2 layout {{train,val}}/{{image,label,depth,normal}}/<i>.npy, found {layout}"
        )
    opts.num_classes = 13
    tasks = ("seg", "depth", "normal") if has_normals(src) else ("seg", "depth")
    extra = ("normal",) if "normal" in tasks else ()
    plan = _split_plan({s: [(s, i) for i in mtan_indices(src, s, "label", extra)] for s in MTAN_SPLITS}, opts, src)
    convert = lambda x: convert_mtan_targets(src, x[0], x[1], "label", 13, opts.height, opts.width, tasks)  # noqa: E731
    with PreparedWriter(out, force=opts.force, inputs={"--src": src}) as writer:
        _write_splits(writer, plan, convert, lambda x: f"{x[0]}/{x[1]}", opts, progress, tasks)
        depth = {"kind": "metric", "unit": "m", "max": 10.0}
        writer.write_meta({**_base_meta("nyu", 13, opts, src, layout), "depth": depth, "tasks": list(tasks)})
    return out


def prepare_synthetic(
    out: Path,
    train: int = 400,
    val: int = 100,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    force: bool = False,
    progress: ProgressFactory = _no_progress,
) -> Path:
    """Render synthetic street scenes into ``out`` in the official Cityscapes raw layout (atomically)."""
    from crosstask_cli.locks import lock_output
    from crosstask_cli.outputs import check_output_dir

    if train < 1 or val < 1:
        raise DatasetError("synthetic sets need at least one train and one val image")
    out = check_output_dir(out, "synthetic scene folder", "--out", force)
    with lock_output(out):
        check_output_dir(out, "synthetic scene folder", "--out", force)  # again, under the lock
        _render_synthetic(out, train, val, height, width, seed, progress)
    return out


def _render_synthetic(out: Path, train: int, val: int, height: int, width: int, seed: int, progress) -> None:
    from crosstask_cli.data.synthetic import FULL_WIDTH, render_split_to_raw

    tmp = temp_dir_beside(out)
    try:
        for split, n in (("train", train), ("val", val)):
            render_split_to_raw(tmp, split, n, height, width, seed, progress(f"render {split}", n))
        (tmp / "synthetic.json").write_text(
            json.dumps(
                {
                    "generator": f"crosstask {__version__}",
                    "seed": seed,
                    "height": height,
                    "width": width,
                    "train": train,
                    "val": val,
                    # disparity is in pixels of the written images; × this gives full-resolution pixels
                    "disparity_scale": FULL_WIDTH / width,
                },
                indent=2,
            )
        )
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_dir(raw: Path, height: int, width: int, num_classes: int, depth: str = "inverse") -> Path:
    suffix = "" if depth == "inverse" else f"-{depth}"
    return Path(raw) / CACHE_FOLDER / f"{height}x{width}-c{num_classes}{suffix}"


def cache_is_current(cache: Path, data: Path) -> bool:
    """The cache was prepared from ``data`` as it is now (same files, sizes and modification times)."""
    if not is_prepared(cache):
        return False
    try:
        source = read_meta(cache).source
    except DatasetError:
        return False
    return isinstance(source, dict) and source.get("fingerprint") == source_fingerprint(data)


def resolve_data(
    dataset: str,
    data: Path,
    height: int,
    width: int,
    num_classes: int,
    depth: str = "inverse",
    progress: ProgressFactory = _no_progress,
    workers: int = 2,
    message: Callable[[str], None] | None = None,
) -> Path:
    """Return a prepared directory for ``data``: itself if prepared, else a cache inside it, prepared once and
    prepared again when the source files change (names, sizes or modification times)."""
    data = Path(data)
    layout = detect_layout(data)
    if layout == "prepared":
        return data
    cache = cache_dir(data, height, width, num_classes, depth)
    if cache_is_current(cache, data):
        return cache
    if is_prepared(cache) and message:
        message(f"{data} changed since {cache} was prepared from it: preparing it again")
    if not os.access(data, os.W_OK):
        raise DatasetError(
            f"{data}: not writable, cannot create the prepared cache; run `crosstask prepare` to another --out"
        )
    opts = PrepareOptions(height, width, num_classes, depth=depth, workers=workers, force=True)
    if layout == "nyu-mtan":
        return prepare_nyu(data, cache, opts, progress)
    return prepare_cityscapes(data, cache, opts, progress, dataset=known_or_default(dataset, "cityscapes"))


def check_compatible(
    meta: DatasetMeta, num_classes: int, depth_kind: str | None, where: Path, class_names: list[str] | None = None
) -> None:
    """The dataset at ``where`` suits a model of ``num_classes`` (named ``class_names``, when known) predicting
    ``depth_kind`` depth."""
    if meta.num_classes != num_classes:
        raise DatasetError(f"{where}: dataset has {meta.num_classes} classes, the model {num_classes}")
    if class_names is not None and list(class_names) != list(meta.class_names):
        diff = next((i, a, b) for i, (a, b) in enumerate(zip(meta.class_names, class_names, strict=True)) if a != b)
        raise DatasetError(
            f"{where}: the dataset's classes differ from the model's (class {diff[0]} is {diff[1]!r} in the dataset, "
            f"{diff[2]!r} in the model); scores would go under the wrong names"
        )
    if depth_kind is not None and meta.depth_kind != depth_kind:
        raise DatasetError(f"{where}: dataset depth is {meta.depth_kind}, the model predicts {depth_kind}")


@dataclass(frozen=True)
class TrainingData:
    """What a training run asks of its data: the dataset, its folder, the size, classes and depth encoding, the
    tasks whose targets it needs, and for synthetic data the (train, val) scenes to render when the folder is
    missing."""

    dataset: str
    root: Path
    height: int
    width: int
    num_classes: int
    depth: str = "inverse"
    tasks: tuple[str, ...] = ("seg", "depth")
    synthetic: tuple[int, int] = (400, 100)
    # the synthetic scenes are rendered into a missing folder only when the user asked for the default one (no
    # --data) on a new run; a path given (or a resumed run's data) must exist
    generate: bool = True


def prepare_training_data(
    request: TrainingData,
    workers: int = 2,
    message: Callable[[str], None] | None = None,
    progress: ProgressFactory | None = None,
) -> Path:
    """The prepared directory to train on: the request's folder resolved (prepared once into a cache when raw or
    MTAN); for ``synthetic``, the scenes are rendered into it first when it does not exist and ``generate``. The result is checked
    against the requested classes, size and tasks (their targets must be in the data)."""
    dataset, data, height, width = request.dataset, Path(request.root), request.height, request.width
    num_classes, depth, tasks, synthetic = request.num_classes, request.depth, request.tasks, request.synthetic
    kwargs = {"progress": progress} if progress else {}
    if dataset_info(dataset).generated and not data.exists() and request.generate:
        if message:
            message(f"generating the synthetic dataset in {data} ({synthetic[0]}+{synthetic[1]} images)")
        prepare_synthetic(data, train=synthetic[0], val=synthetic[1], height=256, width=512, seed=0, **kwargs)
    if not data.exists():
        hint = (" (synthetic scenes are rendered only into the default folder when --data is not given; render them "
                f"with `crosstask prepare synthetic --out {data}`)" if dataset_info(dataset).generated else
                " (pass --data DIR; see `crosstask prepare --help`)")  # fmt: skip
        raise DatasetError(f"{data}: dataset directory not found{hint}")
    prepared = resolve_data(
        dataset, data, height, width, num_classes, depth, workers=workers or 1, message=message, **kwargs
    )
    meta = read_meta(prepared)
    check_compatible(meta, num_classes, None, prepared)
    if (meta.height, meta.width) != (height, width):
        raise DatasetError(
            f"{prepared}: prepared at {meta.height}×{meta.width}, but training asks for {height}×{width}"
        )
    lacking = [t for t in tasks if t not in meta.tasks]
    if lacking:
        from crosstask_cli.tasks import get_task

        hint = (
            "; its source holds none (synthetic scenes rendered by earlier versions have no normals: render them "
            "again with `crosstask prepare synthetic`)"
            if meta.dataset in dataset_names() and dataset_info(meta.dataset).generated
            else ""
        )
        raise DatasetError(
            f"{prepared}: this {meta.dataset} dataset has no {', '.join(get_task(t).title for t in lacking)} targets "
            f"(its tasks: {', '.join(meta.tasks)}){hint}"
        )
    return prepared
