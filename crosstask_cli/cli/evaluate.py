"""``crosstask eval``: a checkpoint, or prediction files, against a prepared split."""

from __future__ import annotations

import math

from rich.table import Table

from crosstask_cli.cli.common import err, esc, fmt, handle_errors, out
from crosstask_cli.cli.options import parameter, signature, values
from crosstask_cli.evaluation import EVAL_FIELDS

HELP = """Evaluate a checkpoint (--ckpt) or a folder of predictions (--predictions) on a dataset split.

Every task the model predicts is scored. Metrics (standard protocol): mIoU over classes present in target or
prediction and pixel accuracy from one confusion matrix; abs err, abs rel err, RMSE and δ1–3 pooled over every
valid depth pixel; for normals the mean and (exact) median angle and the shares within 11.25°/22.5°/30° over every
valid pixel. `--protocol original` reproduces the reference implementation's averaging (per image / per batch; for
normals MTAN's per-batch values) for comparison with published tables. With --ckpt it also reports the
consistency of direct and transferred predictions.

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
        + (f" · {'fp32' if res.precision == 'off' else res.precision + ' autocast'}" if res.precision else "")
        + (f" · images corrupted: {res.corruption['kind']}:{res.corruption['severity']}" if res.corruption else ""),
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
    for pair, scores in energy["transferred"].items():
        t.add_row(
            f"transferred {pair.replace('_', '-')}: " + " / ".join(scores), " / ".join(fmt(v) for v in scores.values())
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


def _eval_command(**options) -> None:
    from crosstask_cli.cli.common import progress_factory
    from crosstask_cli.evaluation import EvalOptions, run_eval

    opts = EvalOptions(**values(EVAL_FIELDS, options))
    with progress_factory(transient=True) as progress:
        run = run_eval(opts, progress)
    render_results(run.result)
    if run.nulls:
        err.print(f"[yellow]warning:[/] not finite, written as null: {esc(', '.join(run.nulls))}", highlight=False)
    for path in run.written:
        what = "results" if path == opts.json_file else "sparsification plots"
        out.print(f"{what} written to [bold]{esc(path)}[/]")


eval_command = handle_errors(_eval_command)
eval_command.__signature__ = signature(parameter(f) for f in EVAL_FIELDS.values())  # Typer reads the options here
