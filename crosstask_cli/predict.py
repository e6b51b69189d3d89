"""Run a trained model on image files; the files it writes are those of :mod:`crosstask_cli.predictions` and of
each task's spec (at the input's original size; with ``transfer`` also the transferred predictions; with
``fmt="cityscapes"`` one labelIds PNG per input, for the official Cityscapes tools). Unreadable files are skipped
and listed. Inputs are never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crosstask_cli.errors import InputError
from crosstask_cli.options import check_choice, check_positive_int, field_table, option
from crosstask_cli.predictions import FORMATS
from crosstask_cli.tasks import TaskContext, get_task, transfer_file_tag, transfer_order

if TYPE_CHECKING:
    import numpy as np

KIND = "predictions folder"  # the kind of output folder predict writes (outputs.MARKERS)

# The command line reads PredictOptions to draw its flags: this module imports nothing heavy at the top; the work
# imports NumPy, torch, OpenCV and the file formats where it runs.


def output_suffixes(tasks, pairs=(), fmt: str = "crosstask", energy: bool = False) -> tuple[str, ...]:
    """Every file suffix one input's predictions write: each task's files, each transferred prediction's (``pairs``,
    with ``--transfer``), the energy files; the cityscapes format writes the labelIds file only."""
    from crosstask_cli.predictions import ENERGY_SUFFIXES, LABEL_IDS_SUFFIX

    if fmt == "cityscapes":
        return (LABEL_IDS_SUFFIX,)
    out = [x for t in tasks for x in get_task(t).file_suffixes()]
    out += [x for s, t in pairs for x in get_task(t).file_suffixes(transfer_file_tag(s, t))]
    return (*out, *(ENERGY_SUFFIXES if energy else ()))


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
    from crosstask_cli.images import IMAGE_EXTENSIONS

    pairs: list[tuple[Path, Path]] = []
    for inp in inputs:
        inp = Path(inp)
        if inp.is_dir():
            entries = sorted(p for p in (inp.rglob("*") if recursive else inp.glob("*")) if not p.is_dir())
            for f in entries:
                hidden = any(part.startswith(".") for part in f.relative_to(inp).parts)
                if not f.is_file():  # a FIFO, device, socket or broken link, never opened
                    if unsupported is not None and not hidden:
                        unsupported.append((str(f), _not_a_file(f)))
                elif f.suffix.lower() in IMAGE_EXTENSIONS:
                    pairs.append((f, f.relative_to(inp).with_suffix("")))
                elif unsupported is not None and not hidden:
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


def _not_a_file(path: Path) -> str:
    from crosstask_cli.images import special_kind

    try:
        return f"not a regular file ({special_kind(path.stat().st_mode)}); only files are read"
    except OSError:
        return "a broken symbolic link"


def _check_out(
    out: Path,
    pairs: list[tuple[Path, Path]],
    inputs: Iterable[Path],
    force: bool,
    ckpt: Path,
    suffixes: tuple[str, ...],
    fmt: str = "crosstask",
) -> None:
    from crosstask_cli.outputs import check_output_dir, contains
    from crosstask_cli.predictions import MANIFEST, read_manifest

    out_r = out.resolve()
    for inp in inputs:
        if Path(inp).is_dir() and contains(inp, out):
            raise InputError(f"--out {out} is inside the input folder {inp}; choose a folder outside the inputs")
    inputs_r = {f.resolve() for f, _ in pairs}
    for _f, rel in pairs:
        for suffix in suffixes:
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


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """How ``predict`` runs (the options of ``crosstask predict`` besides its inputs, checkpoint and folder)."""

    batch_size: int = option(8, "Images per forward pass.")
    recursive: bool = option(False, "Descend into sub-folders of folder inputs.", short="-r")
    transfer: bool = option(False, "Also write the transferred predictions (runs the TaskTransferNets).")
    energy: bool = option(
        False,
        "Also write each image's consistency energy (models with TaskTransferNets): STEM_energy.npy (float32, the "
        "combined energy per pixel: the mean over the TaskTransferNets of each target task's term, at the input's "
        "size) and STEM_energy_color.png, its mean per image in predictions.json, and list the least reliable images "
        "(highest energy) at the end.",
    )
    fmt: str = option(
        "crosstask",
        "crosstask: each task's files per image (class ids and colours, depth, normals). cityscapes: one PNG of "
        "Cityscapes labelIds per image, at its size, plus predictions.json (19 classes: trainId → labelId by the "
        "official table; 7 classes: each category → road, building, pole, vegetation, sky, person, car, which the "
        "official category scores count exactly), for the official evaluator and benchmark submissions.",
        flag="--format",
    )
    device: str = option("auto", "auto, cpu, cuda[:N] or mps.")
    workers: int = option(
        0,
        "Threads that decode/resize the next images and encode/write the previous ones while the model runs; 0: one "
        "per CPU core this process may use (at least 2). Full-size outputs cost more CPU than a GPU's forward pass, so "
        "on a GPU machine more cores mean more images/s.",
    )
    amp: str = option(
        "off",
        "Precision: auto (bf16 on CPUs with native bf16 and on bf16 GPUs, else fp32; the command's default), off "
        "(fp32; the Python API's default), bf16, fp16.",
    )
    max_pixels: int = option(
        100_000_000,  # images.MAX_PIXELS (this module imports nothing heavy at the top)
        "Skip (and list) an image with more pixels than this, read from its header before its pixels are decoded: "
        "one huge file cannot exhaust the memory and lose the other images' predictions.",
    )
    normal_dtype: str = option(
        "float32",
        "Data type of the STEM_normal*.npy files of models with normals: float32, or float16 (half the size; unit "
        "vectors to within 5e-4 a component, angles to within about 0.05°). eval --predictions reads either.",
    )
    force: bool = option(
        False,
        "Write into an existing predictions folder (one with the predictions.json of an earlier predict), replacing "
        "same-named outputs; any other non-empty folder is refused.",
    )

    def __post_init__(self) -> None:
        check_positive_int(self.batch_size, "--batch-size")
        check_positive_int(self.workers, "--workers", minimum=0)
        check_positive_int(self.max_pixels, "--max-pixels")
        check_choice(self.fmt, "--format", FORMATS)
        check_choice(self.normal_dtype, "--normal-dtype", get_task("normal").file_dtypes)


PREDICT_FIELDS = field_table(PredictOptions)


def predict(
    inputs: Iterable[str | Path],
    ckpt: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    **overrides,
) -> PredictResult:
    """Predict every task of a checkpoint's model for image files; see the module docstring. ``options`` (or its
    fields as keywords: ``batch_size=4, transfer=True, …``) say how: ``workers`` threads (0: one per usable CPU
    core, at least 2) decode the next images and encode/write the previous ones while the model runs; outputs, the
    manifest and ``written`` keep the inputs' order. ``fmt``: ``crosstask`` (each task's files: class ids and
    colours, depth, normals) or ``cityscapes`` (one labelIds PNG per input and the manifest, nothing else).
    ``energy`` (models with TaskTransferNets, crosstask format) also writes each image's combined consistency
    energy map (upsampled bilinearly to the input's size) and its mean in the manifest and ``result.energies``.
    ``progress(n)`` is called as images are done, ``on_total(n)`` once with their number."""
    from crosstask_cli.engine.device import memory_format, resolve_amp, resolve_device
    from crosstask_cli.locks import lock_output
    from crosstask_cli.outputs import PARTIAL, is_partial, mark_partial
    from crosstask_cli.predictions import Manifest, write_manifest

    o = dataclasses.replace(options or PredictOptions(), **overrides)
    inputs, out = [Path(p) for p in inputs], Path(out)
    if o.recursive and not any(p.is_dir() for p in inputs):
        raise InputError("--recursive descends into folders, but every input is a file")
    unsupported: list[tuple[str, str]] = []
    pairs = collect_inputs(inputs, o.recursive, unsupported)
    model, ds = _model_for(ckpt, o)
    written_pairs = transfer_order(model.config.pairs) if o.transfer else ()
    suffixes = output_suffixes(model.config.tasks, written_pairs, o.fmt, o.energy)
    _check_out(out, pairs, inputs, o.force or is_partial(out, KIND), Path(ckpt), suffixes, o.fmt)
    with lock_output(out):  # checked again under the lock: another predict may have written there meanwhile
        _check_out(out, pairs, inputs, o.force or is_partial(out, KIND), Path(ckpt), suffixes, o.fmt)
        dev = resolve_device(o.device)
        mem_fmt = memory_format(dev)
        model = model.to(dev, memory_format=mem_fmt)
        if on_total:
            on_total(len(pairs) + len(unsupported))
        result = PredictResult(out, skipped=list(unsupported))
        if progress and unsupported:
            progress(len(unsupported))
        stage = _PredictStage(model, ds, dev, resolve_amp(o.amp, dev), mem_fmt, out, o, written_pairs)
        created = not out.exists() or not any(out.iterdir())
        mark_partial(out, KIND)
        start = time.perf_counter()
        try:
            stage.run_all(pairs, o.batch_size, o.workers or max(2, usable_cpus()), result, progress)
            result.seconds = time.perf_counter() - start
            if o.energy:
                result.energies = {rel: stage.energies[rel] for rel in result.written}
            if result.written:
                manifest = Manifest(str(Path(ckpt).resolve()), o.transfer, ds["depth"]["kind"], ds["class_names"],
                                    ds["palette"], stage.manifest, o.fmt, result.energies if o.energy else None,
                                    list(model.config.tasks), [list(p) for p in written_pairs])  # fmt: skip
                write_manifest(out, manifest)
        except BaseException as exc:
            _abandon(out, created, exc)
        (out / PARTIAL).unlink()
        if created and not result.written:
            out.rmdir()  # nothing was written: no empty folder left behind
    return result


def _abandon(out: Path, created: bool, exc: BaseException) -> None:
    """A predict that failed or was interrupted: a folder it created is removed with everything in it; a folder
    that held earlier predictions keeps what was written, marked partial, so that a rerun completes it and
    --force may replace it. Re-raises ``exc`` (an OSError with what became of the folder)."""
    import errno as errno_codes
    import shutil

    if created:
        shutil.rmtree(out, ignore_errors=True)
        what = f"{out} was removed (nothing of this run is left)"
    else:
        what = f"{out} holds the predictions written so far: rerun the command to complete them, or --force"
    if isinstance(exc, OSError):
        code = exc.errno or errno_codes.EIO
        raise OSError(code, f"{exc.strerror or exc}; {what}") from exc
    raise exc


def _model_for(ckpt: str | Path, o: PredictOptions):
    """The checkpoint's model (CPU, eval mode) and dataset description, after the checks of what ``o`` asks of it."""
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    c = load_checkpoint(ckpt)
    ds = c["dataset"]
    model = model_from_checkpoint(c, ckpt)
    config = model.config
    if o.fmt == "cityscapes":
        _check_cityscapes_format(ds, tuple(config.tasks), o.transfer, o.energy, Path(ckpt))
    if o.energy and not config.has_transfer:
        from crosstask_cli.energy import NEEDS_BOTH

        raise InputError(f"--energy: {ckpt}: {NEEDS_BOTH}")
    if o.transfer and not config.has_transfer:
        raise InputError(
            f"--transfer: {ckpt} has no TaskTransferNets (trained with --tasks {','.join(config.tasks)}"
            f"{'' if len(config.tasks) == 1 else ' and --consistency none'}), so there is nothing to transfer"
        )
    return model, ds


class _PredictStage:
    """The three overlapping stages of ``predict``: worker threads decode the next images and encode/write the
    previous ones while the model runs on this thread. Both queues are bounded, so memory stays a few batches of
    images. On a CPU the workers also upsample each prediction to its input's size; on a GPU this thread does, on
    the device, before the arrays come to the host."""

    def __init__(self, model, ds: dict, dev, precision: str, mem_fmt, out: Path, o: PredictOptions, pairs):
        self.model, self.dev, self.precision, self.mem_fmt = model, dev, precision, mem_fmt
        self.out, self.fmt, self.pairs, self.energy = out, o.fmt, pairs, o.energy
        self.max_pixels = o.max_pixels
        self.file_dtypes = {"normal": o.normal_dtype}  # tasks whose spec offers a choice of file dtype
        self.ds = ds
        self.ctx = TaskContext.from_dataset_info(ds)
        self.h, self.w = ds["height"], ds["width"]
        self.tasks = tuple(model.config.tasks)
        self.manifest: dict[str, str] = {}
        self.energies: dict[str, float] = {}

    def load(self, f: Path) -> tuple[tuple[int, int], np.ndarray]:
        """Decode and resize to the model's size (a worker thread: OpenCV releases the GIL)."""
        from crosstask_cli.data.resize import resize_image
        from crosstask_cli.images import read_image

        img = read_image(f, self.max_pixels)
        return img.shape[:2], resize_image(img, self.h, self.w)

    def full_size(self, size: tuple[int, int], maps: dict, energy_map=None) -> tuple[dict, np.ndarray | None]:
        """One image's low-resolution outputs ({(task, tag): C×h×w on the model's device}) → the full-size arrays
        of each and the energy map at the input's size."""
        from crosstask_cli.ops import upsampled_map

        full = {key: get_task(key[0]).full_size(t, size) for key, t in maps.items()}
        return full, None if energy_map is None else upsampled_map(energy_map, size)

    def finish(self, rel: Path, full: dict, energy_map: np.ndarray | None = None) -> None:
        """Encode and write one image's outputs (a worker thread)."""
        from crosstask_cli.predictions import encode_energy, encode_label_ids, write_files

        if self.fmt == "cityscapes":
            write_files(self.out, rel, encode_label_ids(full[("seg", "")], self.ds["num_classes"]))
            return
        files: dict[str, bytes] = {} if energy_map is None else encode_energy(energy_map)
        for (task, tag), array in full.items():
            files.update(get_task(task).encode(array, self.ctx, tag, self.file_dtypes.get(task)))
        write_files(self.out, rel, files)

    def upsample_and_finish(self, rel: Path, size: tuple[int, int], maps: dict, energy_map=None) -> None:
        self.finish(rel, *self.full_size(size, maps, energy_map))

    def forward(self, batch: list) -> tuple[dict, object]:
        """The model on one batch: {(task, tag): B×C×h×w float} of the files to write, and the combined energy
        (B×h×w) when asked for."""
        import numpy as np
        import torch

        from crosstask_cli.data.dataset import normalise
        from crosstask_cli.engine.device import autocast

        x = normalise(torch.from_numpy(np.stack([small for _, _, _, small in batch])))
        x = x.to(self.dev).contiguous(memory_format=self.mem_fmt)
        with torch.inference_mode(), autocast(self.dev, self.precision):
            pred = self.model(x, direct_only=not (self.pairs or self.energy))
        maps = {(t, ""): pred.direct[t].float() for t in self.tasks}
        if self.fmt == "cityscapes":
            maps = {("seg", ""): maps[("seg", "")]}
        for s, t in self.pairs:
            maps[(t, transfer_file_tag(s, t))] = pred.transferred[(s, t)].float()
        combined = None
        if self.energy:
            from crosstask_cli.energy import energy_maps

            with torch.inference_mode():
                combined = energy_maps(pred.map(lambda v: v.float())).combined.float()  # B×h×w at the model's size
            for (_, rel, _, _), value in zip(batch, combined.flatten(1).mean(1).tolist(), strict=True):
                self.energies[str(rel)] = value
        return maps, combined

    def run_all(self, pairs, batch_size: int, workers: int, result: PredictResult, progress) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        import torch

        ahead = 2 * batch_size
        with ThreadPoolExecutor(workers) as pool:
            todo = iter(pairs)
            loads: deque = deque()  # (file, rel, future of load), input order
            writes: deque = deque()  # (file, rel, future of finish), input order

            def refill() -> None:
                for f, rel in todo:
                    loads.append((f, rel, pool.submit(self.load, f)))
                    if len(loads) >= ahead:
                        return

            def drain(keep: int) -> None:
                """Account finished writes in input order; wait while more than ``keep`` are pending."""
                while writes and (len(writes) > keep or writes[0][2].done()):
                    f, rel, fut = writes.popleft()
                    fut.result()  # a write error (disk full, permission) ends the run, naming the file
                    result.written.append(str(rel))
                    self.manifest[str(rel)] = str(f.resolve())
                    if progress:
                        progress(1)

            def run(batch: list) -> None:
                maps, combined = self.forward(batch)
                on_gpu = self.dev.type != "cpu"  # a GPU upsamples on this thread; on a CPU the workers do
                for i, (f, rel, size, _) in enumerate(batch):
                    one = {key: t[i] for key, t in maps.items()}
                    e_map = None if combined is None else combined[i]
                    if on_gpu:
                        with torch.inference_mode():
                            done = pool.submit(self.finish, rel, *self.full_size(size, one, e_map))
                    else:
                        done = pool.submit(self.upsample_and_finish, rel, size, one, e_map)
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
