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
    """Print an EvalResult as two tables (metrics, per-class IoU)."""
    seg, dep = res.segmentation, res.depth
    t = Table(
        title=f"{res.dataset or ''} {res.split} · {res.num_images} images · {res.protocol} protocol"
        + (f" · {'fp32' if res.precision == 'off' else res.precision + ' autocast'}" if res.precision else ""),
        title_justify="left",
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    if seg:
        t.add_row("mIoU", fmt(seg["miou"]))
        t.add_row("pixel accuracy", fmt(seg["pixel_acc"]))
        if seg.get("missed_pixels"):
            t.add_row("pixels predicted as no class (misses)", str(seg["missed_pixels"]))
    for k, name in (
        ("abs_err", "abs err"),
        ("rel_err", "abs rel err"),
        ("sq_rel", "sq rel err"),
        ("rmse", "RMSE"),
        ("rmse_log", "RMSE log"),
        ("irmse", "iRMSE (reciprocal units)"),
        ("delta1", "δ < 1.25"),
        ("delta2", "δ < 1.25²"),
        ("delta3", "δ < 1.25³"),
    ):
        if k in dep:
            t.add_row(name, fmt(dep[k]))
    if res.consistency:
        t.add_row("seg agreement (direct vs transferred)", fmt(res.consistency["seg_agreement"]))
        t.add_row("depth gap |direct − transferred|", fmt(res.consistency["depth_gap"]))
    out.print(t)
    if res.cityscapes:
        render_official(res.cityscapes)
    if res.energy:
        render_energy(res.energy, res.corruption)
    if res.tasks is not None and len(res.tasks) < 2:
        out.print(f"scored: {', '.join(res.tasks)} only (no prediction files for the other task)")
    if not seg:
        return
    pc = Table(title="per-class IoU", title_justify="left")
    pc.add_column("class")
    pc.add_column("IoU", justify="right")
    for name, v in seg["per_class_iou"].items():
        pc.add_row(name, "absent" if isinstance(v, float) and math.isnan(v) else fmt(v))
    out.print(pc)


def render_energy(energy: dict, corruption: dict | None = None) -> None:
    """The consistency-energy report (and the out-of-distribution check)."""
    t = Table(title="consistency energy (no labels needed) and how well it predicts error", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    m = energy["mean"]
    t.add_row(
        "mean energy: seg (nats) / depth / combined", f"{fmt(m['seg'])} / {fmt(m['depth'])} / {fmt(m['combined'])}"
    )
    tr = energy["transferred"]
    t.add_row("transferred seg-from-depth: mIoU / pixel acc",
              f"{fmt(tr['seg_from_depth']['miou'])} / {fmt(tr['seg_from_depth']['pixel_acc'])}")  # fmt: skip
    t.add_row("transferred depth-from-seg: abs / rel err",
              f"{fmt(tr['depth_from_seg']['abs_err'])} / {fmt(tr['depth_from_seg']['rel_err'])}")  # fmt: skip
    sp = energy["spearman"]
    t.add_row("Spearman: seg energy vs 1 − image mIoU", fmt(sp["seg_energy_vs_1_minus_miou"]))
    t.add_row("Spearman: depth energy vs image abs err", fmt(sp["depth_energy_vs_abs_err"]))
    t.add_row("Spearman: combined vs 1 − mIoU / abs err",
              f"{fmt(sp['combined_vs_1_minus_miou'])} / {fmt(sp['combined_vs_abs_err'])}")  # fmt: skip
    for key, label in (
        ("pixels_seg_error_by_seg_energy", "sparsification, pixels, seg error"),
        ("pixels_abs_err_by_depth_energy", "sparsification, pixels, abs err"),
        ("images_1_minus_miou_by_combined", "sparsification, images, 1 − mIoU"),
        ("images_abs_err_by_combined", "sparsification, images, abs err"),
    ):
        s = energy["sparsification"][key]
        t.add_row(
            f"{label}: AUSC / oracle / random", f"{fmt(s['ausc'])} / {fmt(s['oracle_ausc'])} / {fmt(s['random'])}"
        )
    if corruption:
        c, k = corruption, corruption["clean"]
        t.add_row(f"[bold]{c['kind']}:{c['severity']}[/] clean → corrupted: mIoU",
                  f"{fmt(k['miou'])} → {fmt(c['corrupted']['miou'])}")  # fmt: skip
        t.add_row("clean → corrupted: abs err", f"{fmt(k['abs_err'])} → {fmt(c['corrupted']['abs_err'])}")
        t.add_row("clean → corrupted: mean combined energy",
                  f"{fmt(k['energy']['combined'])} → {fmt(c['corrupted']['energy']['combined'])}")  # fmt: skip
        a = c["auroc"]
        t.add_row("AUROC corrupted vs clean by energy: combined / seg / depth",
                  f"{fmt(a['combined'])} / {fmt(a['seg'])} / {fmt(a['depth'])}")  # fmt: skip
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
        ds = PreparedDataset(prepared, split, verify=verify)
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
