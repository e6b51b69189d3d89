"""``crosstask eval`` as a function: :class:`EvalOptions` (every option of the command, with its flag and help) and
:func:`run_eval`, which evaluates a checkpoint on a prepared split (optionally with the energy report or a
corruption check), a checkpoint on raw Cityscapes at full resolution, or prediction files, and writes the JSON and
the sparsification plot asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crosstask_cli.errors import ConfigError
from crosstask_cli.options import check_choice, check_positive_int, field_table, option

ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """What to evaluate and how (the options of ``crosstask eval``)."""

    ckpt: Path | None = option(None, "Checkpoint to evaluate.")
    predictions: Path | None = option(
        None,
        "Folder of prediction files (<id>_seg.png / <id>_depth.npy / <id>_normal.npy, as written by `crosstask "
        "predict`, either format).",
    )
    data: Path | None = option(None, "Dataset (prepared, raw or MTAN). Default with --ckpt: the one it was trained on.")
    split: str = option("val", "Split to evaluate (val is the official evaluation split).")
    protocol: str = option(
        "standard", "standard (pooled, batch-size invariant) or original (the reference implementation's averaging)."
    )
    json_file: Path | None = option(None, "Also write the results as JSON to this file.", flag="--json")
    batch_size: int = option(8, "Evaluation batch size (the original protocol's per-batch averages depend on it).")
    device: str | None = option(None, "auto (default), cpu, cuda[:N] or mps (with --ckpt).")
    amp: str | None = option(
        None,
        "Precision with --ckpt: auto (default: bf16 on CPUs with native bf16 and on bf16 GPUs, else fp32), off (fp32), "
        "bf16, fp16. Metrics are accumulated in fp32.",
    )
    workers: int | None = option(None, "DataLoader worker processes (0; with --ckpt).")
    full_resolution: bool = option(
        False,
        "With --ckpt and a raw Cityscapes-layout --data (leftImg8bit/gtFine/disparity; default: the data it was "
        "trained on): predict each image at the trained size, upsample the logits to the ground truth's size and "
        "score there, streaming (no prepared copy). Adds the official scores: class and category IoU, and iIoU where "
        "*_gtFine_instanceIds.png exist (7-class models: category scores, against the official categories).",
    )
    energy: bool | None = option(
        None,
        "The consistency-energy report (with --ckpt; default: on for models with TaskTransferNets): mean energy per "
        "task and combined (seg: KL(direct ‖ transferred) per pixel, depth: |direct − transferred|, normals: 1 − cos; "
        "combined: the mean over the TaskTransferNets), the transferred predictions' own metrics, Spearman correlation "
        "of per-image energy with per-image error, and sparsification (error left after removing the highest-energy "
        "pixels/images, against the oracle).",
        flag="--energy/--no-energy",
    )
    corrupt: str | None = option(
        None,
        "Out-of-distribution check (with --ckpt): evaluate clean and with the images corrupted on the fly (noise, blur, "
        "fog, brightness, jpeg; severity 1–5, default 3) and report the AUROC of telling corrupted from clean images "
        "by their energy. The metrics shown are the corrupted ones.",
        metavar="KIND[:SEVERITY]",
    )
    sparsification_png: Path | None = option(None, "Write the sparsification plots of the energy report to this PNG.")
    verify: bool = option(
        False,
        "Check every value of the evaluated split first (labels in range, depth finite and ≥ 0, unit normals); by "
        "default only its format and a sample of values are checked.",
    )

    def __post_init__(self) -> None:
        from crosstask_cli.metrics import PROTOCOLS
        from crosstask_cli.outputs import check_output_file

        check_choice(self.protocol, "--protocol", PROTOCOLS)
        check_positive_int(self.batch_size, "--batch-size")
        if self.workers is not None:
            check_positive_int(self.workers, "--workers", minimum=0)
        if (self.ckpt is None) == (self.predictions is None):
            raise ConfigError("give exactly one of --ckpt CKPT or --predictions PRED_DIR")
        inputs = {"--ckpt": self.ckpt, "--data": self.data, "--predictions": self.predictions}
        check_output_file(self.json_file, "--json", inputs)
        if self.predictions is not None and (self.device, self.workers, self.amp) != (None, None, None):
            raise ConfigError(
                "--device, --workers and --amp apply to evaluating a model (--ckpt), not prediction files"
            )
        if self.full_resolution and (self.ckpt is None or self.protocol != "standard" or self.verify):
            raise ConfigError(
                "--full-resolution evaluates a checkpoint (--ckpt) with the standard protocol, without --verify"
            )
        if (self.energy or self.corrupt or self.sparsification_png) and (self.ckpt is None or self.full_resolution):
            raise ConfigError(
                "--energy, --corrupt and --sparsification-png evaluate a checkpoint (--ckpt) on a prepared split"
            )
        if self.energy is False and (self.corrupt or self.sparsification_png):
            raise ConfigError("--corrupt and --sparsification-png need the energy report; drop --no-energy")
        check_output_file(self.sparsification_png, "--sparsification-png", {"--ckpt": self.ckpt, "--data": self.data})


EVAL_FIELDS = field_table(EvalOptions)


@dataclass
class EvalRun:
    """What :func:`run_eval` did: the result, the files it wrote, and the JSON keys written as null (not finite;
    absent classes and undefined correlations aside, which are null by definition)."""

    result: object
    written: list[Path] = field(default_factory=list)
    nulls: list[str] = field(default_factory=list)


def _no_progress(description: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


def run_eval(opts: EvalOptions, progress: ProgressFactory | None = None) -> EvalRun:
    """Evaluate as ``opts`` says; ``progress(description, total)`` returns an ``advance(n)`` callable (images)."""
    progress = progress or _no_progress
    if opts.full_resolution:
        res = _full_resolution(opts, progress)
    elif opts.predictions is not None:
        res = _prediction_files(opts)
    else:
        res = _checkpoint(opts, progress)
    run = EvalRun(res)
    if opts.sparsification_png is not None:
        from crosstask_cli.visualize import plot_sparsification

        plot_sparsification(res.energy, opts.sparsification_png, f"{Path(opts.ckpt).name} · {res.split}")
        run.written.append(opts.sparsification_png)
    if opts.json_file is not None:
        from crosstask_cli.atomic import atomic_write_json

        replaced = atomic_write_json(opts.json_file, res.to_dict())
        run.nulls = [k for k in replaced if ".per_class_iou." not in k and not k.startswith(("cityscapes.", "energy."))]
        run.written.append(opts.json_file)
    return run


def _full_resolution(opts: EvalOptions, progress: ProgressFactory):
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from crosstask_cli.engine.data_paths import default_data
    from crosstask_cli.engine.device import resolve_device
    from crosstask_cli.engine.full_resolution import check_full_resolution, evaluate_full_resolution

    c = load_checkpoint(opts.ckpt)
    raw = opts.data if opts.data is not None else default_data(c)
    check_full_resolution(c["dataset"], raw)
    model = model_from_checkpoint(c, opts.ckpt)
    bar: list = []  # the sample count is known once the raw split is listed
    res = evaluate_full_resolution(
        model, c["dataset"], raw, opts.split, opts.batch_size, resolve_device(opts.device or "auto"),
        opts.amp or "auto", max(opts.workers or 0, 2), progress=lambda n: bar[0](n) if bar else None,
        on_total=lambda n: bar.append(progress(f"eval {opts.split} (full resolution)", n)),
    )  # fmt: skip
    res.checkpoint = str(opts.ckpt)
    return res


def _prediction_files(opts: EvalOptions):
    from crosstask_cli.data.prepare import detect_layout
    from crosstask_cli.engine.evaluator import evaluate_predictions

    if opts.data is None:
        raise ConfigError("--predictions needs --data: the prepared dataset the predictions are for")
    if detect_layout(opts.data) != "prepared":
        raise ConfigError(
            f"{opts.data}: --predictions is evaluated against a prepared dataset (see `crosstask prepare`)"
        )
    return evaluate_predictions(opts.predictions, opts.data, opts.split, opts.protocol, opts.batch_size,
                                verify=opts.verify)  # fmt: skip


def _checkpoint(opts: EvalOptions, progress: ProgressFactory):
    from crosstask_cli.data.corruptions import Corruption
    from crosstask_cli.data.dataset import PreparedDataset
    from crosstask_cli.data.prepared import read_meta
    from crosstask_cli.energy import NEEDS_BOTH
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from crosstask_cli.engine.data_paths import resolve_eval_data
    from crosstask_cli.engine.device import resolve_device
    from crosstask_cli.engine.evaluator import evaluate, evaluate_corruption, evaluation_tasks

    corruption = Corruption.parse(opts.corrupt) if opts.corrupt else None
    c = load_checkpoint(opts.ckpt)
    prepared = resolve_eval_data(c, opts.data)
    dev = resolve_device(opts.device or "auto")
    model = model_from_checkpoint(c, opts.ckpt).to(dev)
    energy = opts.energy
    if energy is None:  # on where it exists; asked for by --corrupt and --sparsification-png
        energy = model.config.has_transfer or bool(opts.corrupt or opts.sparsification_png)
    if energy and not model.config.has_transfer:
        raise ConfigError(f"{opts.ckpt}: {NEEDS_BOTH}")
    ds = PreparedDataset(prepared, opts.split, verify=opts.verify, tasks=evaluation_tasks(model, read_meta(prepared)))
    kw = dict(batch_size=opts.batch_size, device=dev, protocol=opts.protocol, workers=opts.workers or 0,
              amp=opts.amp or "auto")  # fmt: skip
    passes = 2 if corruption else 1
    advance = progress(f"eval {opts.split}" + (f" (clean, {corruption.name})" if corruption else ""), passes * len(ds))
    if corruption is not None:
        res = evaluate_corruption(model, ds, corruption, opts.split, progress=advance, **kw)
    else:
        res = evaluate(model, ds, opts.split, progress=advance, energy=energy, **kw)
    res.checkpoint, res.data = str(opts.ckpt), str(prepared)
    return res
