"""Run a trained model on image files; the files it writes are those of :mod:`crosstask_cli.predictions`
(at the input's original size; with ``transfer`` also the transferred predictions; with ``fmt="cityscapes"``
one labelIds PNG per input, for the official Cityscapes tools). Unreadable files are skipped and listed. Inputs
are never overwritten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosstask_cli.errors import InputError
from crosstask_cli.images import IMAGE_EXTENSIONS, read_image
from crosstask_cli.ops import upsampled_class_ids, upsampled_map
from crosstask_cli.predictions import (
    ENERGY_SUFFIXES,
    FORMATS,
    MANIFEST,
    TRANSFER_TAG,
    Manifest,
    encode_depth,
    encode_energy,
    encode_label_ids,
    encode_seg,
    output_suffixes,
    read_manifest,
    write_files,
    write_manifest,
)


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class PredictResult:
    out: Path
    written: list[str] = field(default_factory=list)  # relative stems REL/STEM
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    energies: dict[str, float] = field(default_factory=dict)  # with energy: REL/STEM → mean combined energy

    def least_reliable(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` images with the highest consistency energy, highest first."""
        return sorted(self.energies.items(), key=lambda kv: -kv[1])[:n]

    @property
    def images_per_second(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else float("nan")


def collect_inputs(
    inputs: Iterable[Path], recursive: bool = False, unsupported: list[tuple[str, str]] | None = None
) -> list[tuple[Path, Path]]:
    """(file, relative output stem) pairs. Folders contribute their image files (recursively if asked); their
    other files (hidden ones aside) are appended to ``unsupported`` as (path, reason). Files given explicitly are
    taken whatever their extension (and skipped later if unreadable)."""
    pairs: list[tuple[Path, Path]] = []
    for inp in inputs:
        inp = Path(inp)
        if inp.is_dir():
            files = sorted(p for p in (inp.rglob("*") if recursive else inp.glob("*")) if p.is_file())
            for f in files:
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    pairs.append((f, f.relative_to(inp).with_suffix("")))
                elif unsupported is not None and not any(part.startswith(".") for part in f.relative_to(inp).parts):
                    kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
                    unsupported.append((str(f), f"not a supported image type ({kinds})"))
        elif inp.exists():
            pairs.append((inp, Path(inp.stem)))
        else:
            raise FileNotFoundError(f"{inp}: no such file or directory")
    seen: dict[Path, Path] = {}
    for f, rel in pairs:
        if rel in seen and seen[rel] != f:
            raise InputError(f"{f} and {seen[rel]} would write the same outputs ({rel}_*); predict them separately")
        seen[rel] = f
    return pairs


def _check_out(
    out: Path,
    pairs: list[tuple[Path, Path]],
    inputs: Iterable[Path],
    force: bool,
    ckpt: Path,
    fmt: str = "crosstask",
    energy: bool = False,
) -> None:
    from crosstask_cli.outputs import check_output_dir, contains

    out_r = out.resolve()
    for inp in inputs:
        if Path(inp).is_dir() and contains(inp, out):
            raise InputError(f"--out {out} is inside the input folder {inp}; choose a folder outside the inputs")
    inputs_r = {f.resolve() for f, _ in pairs}
    for _f, rel in pairs:
        for suffix in output_suffixes(fmt=fmt) + (ENERGY_SUFFIXES if energy else ()):
            if (out_r / f"{rel}{suffix}").resolve() in inputs_r:
                raise InputError(f"writing {out / f'{rel}{suffix}'} would overwrite an input")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    inputs_by_flag = {f"input {i}": p for i, p in enumerate(inputs, 1)} | {"--ckpt": ckpt}
    check_output_dir(out, "predictions folder", "--out", force, inputs_by_flag)
    if (out / MANIFEST).is_file():
        earlier = read_manifest(out).format
        if earlier != fmt:  # the official matcher must find exactly one file per image
            raise InputError(
                f"--out {out} holds predictions in the {earlier} format; write the {fmt} format into another folder"
            )


def _check_cityscapes_format(ds: dict, tasks: tuple[str, ...], transfer: bool, energy: bool, ckpt: Path) -> None:
    """``--format cityscapes`` needs a segmentation model with Cityscapes labels (7 or 19 classes) and writes
    nothing but labelIds."""
    from crosstask_cli.data.labels import has_cityscapes_labels

    for flag, given in (("--energy", energy), ("--transfer", transfer)):
        if given:
            raise InputError(
                f"--format cityscapes writes one labelIds PNG per image; {flag} needs the crosstask format"
            )
    if not has_cityscapes_labels(ds["name"], ds["num_classes"]):
        raise InputError(
            f"--format cityscapes writes Cityscapes labelIds; {ckpt} predicts {ds['num_classes']} {ds['name']} classes"
        )
    if "seg" not in tasks:
        raise InputError(f"--format cityscapes writes segmentation; {ckpt} is a depth-only model")


def predict(
    inputs: Iterable[str | Path],
    ckpt: str | Path,
    out: str | Path,
    batch_size: int = 8,
    recursive: bool = False,
    transfer: bool = False,
    device: str = "auto",
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    amp: str | bool = "off",
    on_total: Callable[[int], None] | None = None,
    workers: int = 0,
    fmt: str = "crosstask",
    energy: bool = False,
) -> PredictResult:
    """Predict segmentation and depth for image files with a checkpoint; see the module docstring. ``workers``
    threads (0: one per usable CPU core, at least 2) decode the next images and encode/write the previous ones
    while the model runs; outputs, the manifest and ``written`` keep the inputs' order. ``fmt``: ``crosstask`` (class ids, colours, depth) or
    ``cityscapes`` (one labelIds PNG per input and the manifest, nothing else). ``energy`` (models with
    TaskTransferNets, crosstask format) also writes each image's combined consistency energy map (upsampled
    bilinearly to the input's size) and its mean in the manifest and ``result.energies``."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.data.resize import resize_image
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from crosstask_cli.engine.device import autocast, memory_format, resolve_amp, resolve_device

    inputs = [Path(p) for p in inputs]
    out = Path(out)
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if recursive and not any(p.is_dir() for p in inputs):
        raise InputError("--recursive descends into folders, but every input is a file")
    unsupported: list[tuple[str, str]] = []
    pairs = collect_inputs(inputs, recursive, unsupported)
    c = load_checkpoint(ckpt)
    ds = c["dataset"]
    h, w, palette, depth_kind = ds["height"], ds["width"], [tuple(p) for p in ds["palette"]], ds["depth"]["kind"]
    model = model_from_checkpoint(c, ckpt)
    if fmt == "cityscapes":
        _check_cityscapes_format(ds, tuple(model.config.tasks), transfer, energy, Path(ckpt))
    if energy and not model.config.has_transfer:
        from crosstask_cli.energy import NEEDS_BOTH

        raise InputError(f"--energy: {ckpt}: {NEEDS_BOTH}")
    _check_out(out, pairs, inputs, force, Path(ckpt), fmt, energy)
    if transfer and not model.config.has_transfer:
        raise InputError(
            f"--transfer: {ckpt} has no TaskTransferNets (trained with --tasks {','.join(model.config.tasks)}"
            f"{'' if len(model.config.tasks) == 1 else ' and --consistency none'}), so there is nothing to transfer"
        )
    dev = resolve_device(device)
    precision = resolve_amp(amp, dev)
    mem_fmt = memory_format(dev)
    model = model.to(dev, memory_format=mem_fmt)
    if on_total:
        on_total(len(pairs) + len(unsupported))
    result = PredictResult(out, skipped=list(unsupported))
    if progress and unsupported:
        progress(len(unsupported))
    manifest: dict[str, str] = {}
    energies: dict[str, float] = {}
    if energy:
        from crosstask_cli.energy import energy_maps
    start = time.perf_counter()

    def load(f: Path) -> tuple[tuple[int, int], np.ndarray]:
        """Decode and resize to the model's size (a worker thread: OpenCV releases the GIL)."""
        img = read_image(f)
        return img.shape[:2], resize_image(img, h, w)

    def full_size(size: tuple[int, int], maps: dict, energy_map=None) -> tuple[dict, np.ndarray | None]:
        """One image's low-resolution outputs (on the model's device) → {tag: (H×W uint8 class ids, H×W float32
        depth)} and the energy map at the input's size. On a CPU this runs in a worker thread; on a GPU on this
        thread, where the upsampling runs on the GPU before the arrays come to the host."""
        full = {
            tag: (None if seg_t is None else upsampled_class_ids(seg_t[0], size),
                  None if dep_t is None else upsampled_map(dep_t[0, 0], size))
            for tag, (seg_t, dep_t) in maps.items()  # a single-task model predicts one of the two
        }  # fmt: skip
        return full, None if energy_map is None else upsampled_map(energy_map, size)

    def finish(rel: Path, full: dict, energy_map: np.ndarray | None = None) -> None:
        """Encode and write one image's outputs (a worker thread)."""
        if fmt == "cityscapes":
            write_files(out, rel, encode_label_ids(full[""][0], ds["num_classes"]))
            return
        files: dict[str, bytes] = {} if energy_map is None else encode_energy(energy_map)
        for tag, (ids, depth) in full.items():
            if ids is not None:
                files.update(encode_seg(ids, palette, tag))
            if depth is not None:
                files.update(encode_depth(depth.astype(np.float32, copy=False), depth_kind, tag))
        write_files(out, rel, files)

    def upsample_and_finish(rel: Path, size: tuple[int, int], maps: dict, energy_map=None) -> None:
        finish(rel, *full_size(size, maps, energy_map))

    # Three stages overlap: worker threads decode the next images and encode/write the previous ones while the
    # model runs on this thread. Both queues are bounded, so memory stays a few batches of images.
    ahead = 2 * batch_size
    with ThreadPoolExecutor(workers or max(2, usable_cpus())) as pool:
        todo = iter(pairs)
        loads: deque = deque()  # (file, rel, future of load), input order
        writes: deque = deque()  # (file, rel, future of finish), input order

        def refill() -> None:
            for f, rel in todo:
                loads.append((f, rel, pool.submit(load, f)))
                if len(loads) >= ahead:
                    return

        def drain(keep: int) -> None:
            """Account finished writes in input order; wait while more than ``keep`` are pending."""
            while writes and (len(writes) > keep or writes[0][2].done()):
                f, rel, fut = writes.popleft()
                fut.result()  # a write error (disk full, permission) ends the run, naming the file
                result.written.append(str(rel))
                manifest[str(rel)] = str(f.resolve())
                if progress:
                    progress(1)

        def run(batch: list) -> None:
            x = normalise(torch.from_numpy(np.stack([small for _, _, _, small in batch])))
            x = x.to(dev).contiguous(memory_format=mem_fmt)
            with torch.inference_mode(), autocast(dev, precision):
                pred = model(x, direct_only=not (transfer or energy))
            tags = {"": (pred.seg, pred.depth)}
            if transfer and pred.seg_from_depth is not None:
                tags[TRANSFER_TAG] = (pred.seg_from_depth, pred.depth_from_seg)
            maps = {t: tuple(None if a is None else a.float() for a in pair) for t, pair in tags.items()}
            combined = None
            if energy:
                with torch.inference_mode():
                    combined = energy_maps(pred).combined.float()  # B×h×w at the model's size
                for (_, rel, _, _), value in zip(batch, combined.flatten(1).mean(1).tolist(), strict=True):
                    energies[str(rel)] = value
            on_gpu = dev.type != "cpu"  # a GPU upsamples on this thread; on a CPU the workers do
            for i, (f, rel, size, _) in enumerate(batch):
                one = {t: tuple(None if a is None else a[i : i + 1] for a in pair) for t, pair in maps.items()}
                e_map = None if combined is None else combined[i]
                if on_gpu:
                    with torch.inference_mode():
                        done = pool.submit(finish, rel, *full_size(size, one, e_map))
                else:
                    done = pool.submit(upsample_and_finish, rel, size, one, e_map)
                writes.append((f, rel, done))
            drain(ahead)

        refill()
        batch: list = []
        while loads:
            f, rel, fut = loads.popleft()
            refill()
            try:
                size, small = fut.result()
            except (OSError, ValueError) as exc:
                result.skipped.append((str(f), str(exc)))
                if progress:
                    progress(1)
                continue
            batch.append((f, rel, size, small))
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        drain(0)
    result.seconds = time.perf_counter() - start
    if energy:
        result.energies = {rel: energies[rel] for rel in result.written}
    if result.written:
        write_manifest(
            out,
            Manifest(str(Path(ckpt).resolve()), transfer, depth_kind, ds["class_names"], ds["palette"], manifest, fmt,
                     result.energies if energy else None),
        )  # fmt: skip
    return result
