"""``crosstask eval``: a checkpoint, or prediction files, against a prepared split."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import CLIError, err, esc, fmt, handle_errors, out
from crosstask_cli.engine.data_paths import default_data, resolve_eval_data

HELP = """Evaluate a checkpoint (--ckpt) or a folder of predictions (--predictions) on a dataset split.

Metrics (standard protocol): mIoU over classes present in target or prediction and pixel accuracy from one
confusion matrix; abs err, abs rel err, RMSE and δ1–3 pooled over every valid depth pixel. `--protocol original`
reproduces the reference implementation's averaging (per image / per batch) for comparison with its table.
With --ckpt it also reports the consistency of direct and transferred predictions.

--predictions reads a `crosstask predict` output in either format (class ids with depth, or --format cityscapes
labelIds) and scores the tasks whose files are present; a predicted id outside the classes is a miss.
--full-resolution (with --ckpt and the raw Cityscapes layout) scores the val split at ground-truth size without
a prepared copy and adds the official evaluator's scores: class IoU, category IoU, iIoU and category iIoU.
"""


def render_results(res) -> None:
    """Print an EvalResult as tables (each task's metrics, consistency, energy, per-class IoU)."""
    from crosstask_cli.tasks import get_task, ordered

    seg = res.segmentation
    t = Table(
        title=f"{res.dataset or ''} {res.split} · {res.num_images} images · {res.protocol} protocol"
        + (f" · {'fp32' if res.precision == 'off' else res.precision + ' autocast'}" if res.precision else ""),
        title_justify="left",
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    for task in ordered(res.metrics):
        values, spec = res.metrics[task], get_task(task)
        for k, name in spec.report_titles.items():
            if k in values:
                t.add_row(name, fmt(values[k]))
        if task == "seg" and values.get("missed_pixels"):
            t.add_row("pixels predicted as no class (misses)", str(values["missed_pixels"]))
    for key, value in (res.consistency or {}).items():
        t.add_row(consistency_title(key), fmt(value))
    out.print(t)
    if res.cityscapes:
        render_official(res.cityscapes)
    if res.energy:
        render_energy(res.energy, res.corruption)
    if res.tasks is not None:
        out.print(f"scored: {', '.join(res.tasks)} only (no predictions or targets of the other tasks)")
    if not seg or "per_class_iou" not in seg:
        return
    pc = Table(title="per-class IoU", title_justify="left")
    pc.add_column("class")
    pc.add_column("IoU", justify="right")
    for name, v in seg["per_class_iou"].items():
        pc.add_row(name, "absent" if isinstance(v, float) and math.isnan(v) else fmt(v))
    out.print(pc)


def consistency_title(key: str) -> str:
    """The row title of a consistency figure: ``seg_agreement`` → "seg agreement (…)"; a pair other than the
    original's two adds its source ("… from normal")."""
    from crosstask_cli.tasks import all_specs

    for spec in all_specs():
        if key == spec.agreement:
            return spec.agreement_title
        if key.startswith(spec.agreement + "_from_"):
            return f"{spec.agreement_title}, from {key[len(spec.agreement) + 6 :]}"
    return key


def render_energy(energy: dict, corruption: dict | None = None) -> None:
    """The consistency-energy report (and the out-of-distribution check)."""
    t = Table(title="consistency energy (no labels needed) and how well it predicts error", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    m = energy["mean"]
    t.add_row("mean energy: " + " / ".join(k if k != "seg" else "seg (nats)" for k in m),
              " / ".join(fmt(v) for v in m.values()))  # fmt: skip
    for pair, values in energy["transferred"].items():
        t.add_row(
            f"transferred {pair.replace('_', '-')}: " + " / ".join(values), " / ".join(fmt(v) for v in values.values())
        )
    for key, value in energy["spearman"].items():
        t.add_row(f"Spearman: {key.replace('_vs_', ' vs ').replace('_', ' ')}", fmt(value))
    for key, s in energy["sparsification"].items():
        t.add_row(
            f"sparsification, {key.replace('_by_', ' by ').replace('_', ' ')}: AUSC / oracle / random",
            f"{fmt(s['ausc'])} / {fmt(s['oracle_ausc'])} / {fmt(s['random'])}",
        )
    if corruption:
        c, k = corruption, corruption["clean"]
        for metric in (x for x in k if x != "energy"):
            t.add_row(f"[bold]{c['kind']}:{c['severity']}[/] clean → corrupted: {metric}",
                      f"{fmt(k[metric])} → {fmt(c['corrupted'][metric])}")  # fmt: skip
        t.add_row("clean → corrupted: mean combined energy",
                  f"{fmt(k['energy']['combined'])} → {fmt(c['corrupted']['energy']['combined'])}")  # fmt: skip
        a = c["auroc"]
        t.add_row("AUROC corrupted vs clean by energy: " + " / ".join(a), " / ".join(fmt(v) for v in a.values()))
    out.print(t)


def render_official(scores: dict) -> None:
    """The official Cityscapes scores of ``eval --full-resolution``, as its evaluator prints them."""
    t = Table(title="official Cityscapes scores (ground-truth resolution)", title_justify="left")
    for col in ("", "IoU", "iIoU"):
        t.add_column(col, justify="right" if col else "left")
    inst = scores.get("instances", False)

    def iiou(value) -> str:
        return fmt(value) if inst else "no instanceIds"

    if "classScores" in scores:
        t.add_row("[bold]classes (average)[/]", fmt(scores["averageScoreClasses"]),
                  iiou(scores["averageScoreInstClasses"]))  # fmt: skip
    t.add_row("[bold]categories (average)[/]", fmt(scores["averageScoreCategories"]),
              iiou(scores["averageScoreInstCategories"]))  # fmt: skip
    for name, v in scores["categoryScores"].items():
        t.add_row(
            f"  {name}",
            fmt(v),
            iiou(scores["categoryInstScores"][name]) if name in scores["categoryInstScores"] else "",
        )
    out.print(t)


@handle_errors
def eval_command(
    ckpt: Path = typer.Option(None, "--ckpt", help="Checkpoint to evaluate."),
    predictions: Path = typer.Option(
        None, "--predictions", help="Folder of <id>_seg.png / <id>_depth.npy files (as written by `crosstask predict`)."
    ),
    data: Path = typer.Option(
        None, "--data", help="Dataset (prepared, raw or MTAN). Default with --ckpt: the one it was trained on."
    ),
    split: str = typer.Option("val", "--split", help="Split to evaluate (val is the official evaluation split)."),
    protocol: str = typer.Option(
        "standard",
        "--protocol",
        help="standard (pooled, batch-size invariant) or original (the reference implementation's averaging).",
    ),
    json_file: Path = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
    batch_size: int = typer.Option(
        8, "--batch-size", min=1, help="Evaluation batch size (the original protocol's depth averaging depends on it)."
    ),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda[:N] or mps (with --ckpt)."),
    amp: str = typer.Option(
        None,
        "--amp",
        help="Precision with --ckpt: auto (default: bf16 on CPUs with native bf16 and on bf16 GPUs, else fp32), off "
        "(fp32), bf16, fp16. Metrics are accumulated in fp32.",
    ),
    workers: int = typer.Option(None, "--workers", min=0, help="DataLoader worker processes (0; with --ckpt)."),
    full_resolution: bool = typer.Option(
        False,
        "--full-resolution",
        help="With --ckpt and a raw Cityscapes-layout --data (leftImg8bit/gtFine/disparity; default: the data it was "
        "trained on): predict each image at the trained size, upsample the logits to the ground truth's size and "
        "score there, streaming (no prepared copy). Adds the official scores: class and category IoU, and iIoU where "
        "*_gtFine_instanceIds.png exist (7-class models: category scores, against the official categories).",
    ),
    energy: bool = typer.Option(
        None,
        "--energy/--no-energy",
        help="The consistency-energy report (with --ckpt; default: on for models with TaskTransferNets): mean energy "
        "(seg: KL(direct ‖ transferred) per pixel, depth: |direct − transferred|, combined ½/½), the transferred "
        "predictions' own metrics, Spearman correlation of per-image energy with per-image error, and "
        "sparsification (error left after removing the highest-energy pixels/images, against the oracle).",
    ),
    corrupt: str = typer.Option(
        None,
        "--corrupt",
        metavar="KIND[:SEVERITY]",
        help="Out-of-distribution check (with --ckpt): evaluate clean and with the images corrupted on the fly "
        "(noise, blur, fog, brightness, jpeg; severity 1–5, default 3) and report the AUROC of telling corrupted "
        "from clean images by their energy. The metrics shown are the corrupted ones.",
    ),
    sparsification_png: Path = typer.Option(
        None, "--sparsification-png", help="Write the sparsification plots of the energy report to this PNG."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Check every value of the evaluated split first (labels in range, depth finite and ≥ 0); by default "
        "only its format and a sample of values are checked.",
    ),
) -> None:
    from crosstask_cli.metrics import PROTOCOLS
    from crosstask_cli.outputs import check_output_file

    if protocol not in PROTOCOLS:
        raise CLIError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if (ckpt is None) == (predictions is None):
        raise CLIError("give exactly one of --ckpt CKPT or --predictions PRED_DIR")
    check_output_file(json_file, "--json", {"--ckpt": ckpt, "--data": data, "--predictions": predictions})
    if predictions is not None and (device is not None or workers is not None or amp is not None):
        raise CLIError("--device, --workers and --amp apply to evaluating a model (--ckpt), not prediction files")
    if full_resolution and (ckpt is None or protocol != "standard" or verify):
        raise CLIError("--full-resolution evaluates a checkpoint (--ckpt) with the standard protocol, without --verify")
    if (energy or corrupt or sparsification_png) and (ckpt is None or full_resolution):
        raise CLIError(
            "--energy, --corrupt and --sparsification-png evaluate a checkpoint (--ckpt) on a prepared split"
        )
    if energy is False and (corrupt or sparsification_png):
        raise CLIError("--corrupt and --sparsification-png need the energy report; drop --no-energy")
    check_output_file(sparsification_png, "--sparsification-png", {"--ckpt": ckpt, "--data": data})
    device, workers, amp = device or "auto", workers or 0, amp or "auto"
    if full_resolution:
        from rich.progress import Progress

        from crosstask_cli.cli.common import progress_columns
        from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
        from crosstask_cli.engine.device import resolve_device
        from crosstask_cli.engine.full_resolution import check_full_resolution, evaluate_full_resolution

        c = load_checkpoint(ckpt)
        raw = data if data is not None else default_data(c)
        check_full_resolution(c["dataset"], raw)
        dev = resolve_device(device)
        model = model_from_checkpoint(c, ckpt)
        with Progress(*progress_columns(), console=err, transient=True) as prog:
            task = prog.add_task(f"eval {split} (full resolution)", total=None, info="")
            res = evaluate_full_resolution(
                model, c["dataset"], raw, split, batch_size, dev, amp, max(workers, 2),
                progress=lambda n: prog.advance(task, n), on_total=lambda n: prog.update(task, total=n),
            )  # fmt: skip
        res.checkpoint = str(ckpt)
    elif predictions is not None:
        from crosstask_cli.data.prepare import detect_layout
        from crosstask_cli.engine.evaluator import evaluate_predictions

        if data is None:
            raise CLIError("--predictions needs --data: the prepared dataset the predictions are for")
        if detect_layout(data) != "prepared":
            raise CLIError(f"{data}: --predictions is evaluated against a prepared dataset (see `crosstask prepare`)")
        res = evaluate_predictions(predictions, data, split, protocol, batch_size, verify=verify)
    else:
        from rich.progress import Progress

        from crosstask_cli.cli.common import progress_columns
        from crosstask_cli.data.corruptions import Corruption
        from crosstask_cli.data.dataset import PreparedDataset
        from crosstask_cli.energy import NEEDS_BOTH
        from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
        from crosstask_cli.engine.device import resolve_device
        from crosstask_cli.engine.evaluator import evaluate, evaluate_corruption

        corruption = Corruption.parse(corrupt) if corrupt else None
        c = load_checkpoint(ckpt)
        prepared = resolve_eval_data(c, data)
        dev = resolve_device(device)
        model = model_from_checkpoint(c, ckpt).to(dev)
        if energy is None:  # on where it exists; asked for by --corrupt and --sparsification-png
            energy = model.config.has_transfer or bool(corrupt or sparsification_png)
        if energy and not model.config.has_transfer:
            raise CLIError(f"{ckpt}: {NEEDS_BOTH}")
        from crosstask_cli.data.prepared import read_meta
        from crosstask_cli.engine.evaluator import evaluation_tasks

        ds = PreparedDataset(prepared, split, verify=verify, tasks=evaluation_tasks(model, read_meta(prepared)))
        kw = dict(batch_size=batch_size, device=dev, protocol=protocol, workers=workers, amp=amp)
        with Progress(*progress_columns(), console=err, transient=True) as prog:
            passes = 2 if corruption else 1
            task = prog.add_task(f"eval {split}" + (f" (clean, {corruption.name})" if corruption else ""),
                                 total=passes * len(ds), info="")  # fmt: skip
            advance = lambda n: prog.advance(task, n)  # noqa: E731
            if corruption is not None:
                res = evaluate_corruption(model, ds, corruption, split, progress=advance, **kw)
            else:
                res = evaluate(model, ds, split, progress=advance, energy=energy, **kw)
        res.checkpoint, res.data = str(ckpt), str(prepared)
    render_results(res)
    if sparsification_png is not None:
        from crosstask_cli.visualize import plot_sparsification

        plot_sparsification(res.energy, sparsification_png, f"{Path(ckpt).name} · {res.split}")
        out.print(f"sparsification plots written to [bold]{esc(sparsification_png)}[/]")
    if json_file is not None:
        from crosstask_cli.atomic import atomic_write_json

        replaced = atomic_write_json(json_file, res.to_dict())
        unexpected = [
            k for k in replaced if ".per_class_iou." not in k and not k.startswith(("cityscapes.", "energy."))
        ]  # absent classes, undefined correlations: null by definition
        if unexpected:
            err.print(f"[yellow]warning:[/] not finite, written as null: {esc(', '.join(unexpected))}", highlight=False)
        out.print(f"results written to [bold]{esc(json_file)}[/]")
