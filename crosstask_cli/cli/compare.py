"""``crosstask compare``."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import CLIError, esc, handle_errors, out

HELP = """Compare runs (run directories or `eval --json` files) on every compared metric of their tasks (mIoU and
pixel accuracy; abs and abs rel error; mean and median angle and the shares within 11.25°/22.5°/30° for normals),
and the multi-task gain Δm against single-task baselines in both conventions (flat mean over metrics as
Nash-MTL/FAMO; per-task mean as LibMTL), positive = better. Writes Markdown, CSV and a bar chart on request.

Several seeds: --sweep OUT/sweep.json (or --group-by on run paths) groups runs by variant and reports mean ± std
over seeds, Δm computed per seed (against the baseline variant's run of the same seed), and with --reference a
paired per-seed comparison that says whether a difference holds on every seed."""


@handle_errors
def compare_command(
    runs: list[Path] = typer.Argument(None, help="Run directories or eval JSON files."),
    sweep: Path = typer.Option(
        None, "--sweep", help="A sweep manifest (OUT/sweep.json or OUT): its finished runs, grouped by variant."
    ),
    group_by: str = typer.Option(
        None,
        "--group-by",
        help="Group the given runs by a regular expression searched in each path: group 'variant' (or the first) "
        "names the variant, 'seed' the seed. 'sweep' means (?P<variant>[^/]+)/seed-(?P<seed>\\d+), a sweep's layout.",
    ),
    reference: str = typer.Option(
        None, "--reference", help="With groups: pair every variant with this one seed by seed (Δm flat difference)."
    ),
    last_k: int = typer.Option(
        None,
        "--last-k",
        min=1,
        help="Use the mean of each run's last K epochs of validation metrics (metrics.csv, the run's validation split) "
        "instead of its eval.json / selected epoch, as the Nash-MTL/FAMO protocol averages the last epochs.",
    ),
    baseline: Path = typer.Option(None, "--baseline", help="One baseline for both tasks."),
    baseline_seg: str = typer.Option(
        None,
        "--baseline-seg",
        help="Single-task segmentation baseline (mIoU, pix acc): a run or eval JSON, or with groups a variant name.",
    ),
    baseline_depth: str = typer.Option(
        None,
        "--baseline-depth",
        help="Single-task depth baseline (abs, abs rel): a run or eval JSON, or with groups a variant name.",
    ),
    task_baselines: list[str] = typer.Option(
        None,
        "--task-baseline",
        metavar="TASK=RUN",
        help="A single-task baseline of another task, e.g. normal=runs/normal-only (repeatable; a run or eval JSON, or "
        "with groups a variant name).",
    ),
    markdown: Path = typer.Option(None, "--markdown", help="Write the table as Markdown."),
    csv_file: Path = typer.Option(None, "--csv", help="Write the table as CSV."),
    plot: Path = typer.Option(None, "--plot", help="Write a bar chart (PNG)."),
) -> None:
    from crosstask_cli.compare import SIGN_CONVENTION, compare, metric_title
    from crosstask_cli.outputs import check_output_file
    from crosstask_cli.tasks import get_task

    if plot is not None and plot.suffix.lower() != ".png":
        raise CLIError(f"--plot {plot}: expected a .png file name")
    runs = runs or []
    grouped = sweep is not None or group_by is not None
    if sweep is not None and (runs or group_by):
        raise CLIError("--sweep reads the runs from the manifest: give no run paths and no --group-by")
    if not grouped and (reference or last_k):
        raise CLIError("--reference and --last-k apply to grouped runs (--sweep or --group-by)")
    if not runs and sweep is None:
        raise CLIError("give run directories / eval JSON files, or --sweep OUT/sweep.json")
    extra = _task_baselines(task_baselines or [])
    if grouped:
        _compare_grouped(runs, sweep, group_by, reference, last_k, baseline, baseline_seg, baseline_depth, extra,
                         markdown, csv_file, plot)  # fmt: skip
        return
    inputs = {f"run {i}": r for i, r in enumerate(runs, 1)}
    inputs |= {"--baseline": baseline, "--baseline-seg": baseline_seg, "--baseline-depth": baseline_depth}
    inputs |= {f"--task-baseline {t}": b for t, b in extra.items()}
    for flag, path in (("--markdown", markdown), ("--csv", csv_file), ("--plot", plot)):
        check_output_file(path, flag, inputs)
    cmp = compare(runs, baseline, baseline_seg, baseline_depth, extra)
    metrics = cmp.metrics
    t = Table(title="comparison", caption=SIGN_CONVENTION, title_justify="left")
    for col in ("run", *map(metric_title, metrics), "Δm flat % ↑", "Δm per task % ↑"):
        t.add_column(col, justify="left" if col == "run" else "right")

    def f(v: float, d: int = 4) -> str:
        return "–" if not math.isfinite(v) else f"{v:.{d}f}"

    for r in cmp.rows():
        t.add_row(esc(r["run"]), *(f(r[m]) for m in metrics), f(r["delta_m_flat"], 2), f(r["delta_m_per_task"], 2))
    out.print(t)
    for task, b in (cmp.baselines or {}).items():
        out.print(f"{get_task(task).title} baseline: {esc(b.name)} ({esc(b.source)})")
    write_outputs(cmp, markdown, csv_file, plot)


def _task_baselines(entries: list[str]) -> dict[str, str]:
    """``--task-baseline TASK=RUN`` entries → {task: run}."""
    from crosstask_cli.tasks import get_task

    out = {}
    for entry in entries:
        task, sep, path = entry.partition("=")
        if not sep or not path:
            raise CLIError(f"--task-baseline {entry!r}: expected TASK=RUN, e.g. normal=runs/normal-only")
        get_task(task.strip())
        out[task.strip()] = path
    return out


def _compare_grouped(runs, sweep, group_by, reference, last_k, baseline, baseline_seg, baseline_depth, extra,
                     markdown, csv_file, plot) -> None:  # fmt: skip
    from crosstask_cli.compare import DEFAULT_GROUP_BY, compare_grouped, metric_title, runs_from_paths, runs_from_sweep
    from crosstask_cli.outputs import check_output_file

    inputs = {f"run {i}": r for i, r in enumerate(runs, 1)} | {"--sweep": sweep}
    for flag, path in (("--markdown", markdown), ("--csv", csv_file), ("--plot", plot)):
        check_output_file(path, flag, inputs)
    if sweep is not None:
        seeded = runs_from_sweep(sweep, last_k)
    else:
        seeded = runs_from_paths(runs, DEFAULT_GROUP_BY if group_by == "sweep" else group_by, last_k)
    cmp = compare_grouped(seeded, baseline_seg or baseline, baseline_depth or baseline, reference, extra)
    metrics = cmp.metrics
    t = Table(title=f"comparison over seeds ({len(seeded)} runs)", caption=cmp.note, title_justify="left")
    cols = ["variant", "seeds", *map(metric_title, metrics), "Δm flat % ↑", "Δm per task % ↑"]
    if reference:
        cols.append(f"Δm − {reference}")
    for col in cols:
        t.add_column(col, justify="left" if col == "variant" else "right")

    from crosstask_cli.compare import paired_text

    for v in cmp.variants:
        row = [esc(v.variant), str(len(v.seeds)), *(v.text(m, 4) for m in metrics), v.text("delta_m_flat", 2),
               v.text("delta_m_per_task", 2)]  # fmt: skip
        if reference:
            row.append(paired_text(v.vs_reference))
        t.add_row(*row)
    out.print(t)
    write_outputs(cmp, markdown, csv_file, plot)


def write_outputs(cmp, markdown: Path | None, csv_file: Path | None, plot: Path | None) -> None:
    """Write a comparison (plain or grouped) as Markdown, CSV and PNG, where asked."""
    from crosstask_cli.atomic import atomic_write_text

    for path, write in ((markdown, lambda p: atomic_write_text(p, cmp.to_markdown())),
                        (csv_file, lambda p: atomic_write_text(p, cmp.to_csv())), (plot, cmp.plot)):  # fmt: skip
        if path:
            write(path)
            out.print(f"wrote [bold]{esc(path)}[/]")
