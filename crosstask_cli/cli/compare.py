"""``crosstask compare``."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import CLIError, esc, handle_errors, out

HELP = """Compare runs (run directories or `eval --json` files): mIoU, pixel accuracy, abs and abs rel error, and the
multi-task gain Δm against single-task baselines in both conventions (flat mean over metrics as Nash-MTL/FAMO;
per-task mean as LibMTL), positive = better. Writes Markdown, CSV and a bar chart on request."""


@handle_errors
def compare_command(
    runs: list[Path] = typer.Argument(..., help="Run directories or eval JSON files."),
    baseline: Path = typer.Option(None, "--baseline", help="One baseline for both tasks."),
    baseline_seg: Path = typer.Option(
        None, "--baseline-seg", help="Single-task segmentation baseline (mIoU, pix acc)."
    ),
    baseline_depth: Path = typer.Option(None, "--baseline-depth", help="Single-task depth baseline (abs, abs rel)."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the table as Markdown."),
    csv_file: Path = typer.Option(None, "--csv", help="Write the table as CSV."),
    plot: Path = typer.Option(None, "--plot", help="Write a bar chart (PNG)."),
) -> None:
    from crosstask_cli.atomic import atomic_write_text
    from crosstask_cli.compare import SIGN_CONVENTION, compare
    from crosstask_cli.outputs import check_output_file

    if plot is not None and plot.suffix.lower() != ".png":
        raise CLIError(f"--plot {plot}: expected a .png file name")
    inputs = {f"run {i}": r for i, r in enumerate(runs, 1)}
    inputs |= {"--baseline": baseline, "--baseline-seg": baseline_seg, "--baseline-depth": baseline_depth}
    for flag, path in (("--markdown", markdown), ("--csv", csv_file), ("--plot", plot)):
        check_output_file(path, flag, inputs)
    cmp = compare(runs, baseline, baseline_seg, baseline_depth)
    t = Table(title="comparison", caption=SIGN_CONVENTION, title_justify="left")
    for col in ("run", "mIoU ↑", "pix acc ↑", "abs ↓", "abs rel ↓", "Δm flat % ↑", "Δm per task % ↑"):
        t.add_column(col, justify="left" if col == "run" else "right")

    def f(v: float, d: int = 4) -> str:
        return "–" if not math.isfinite(v) else f"{v:.{d}f}"

    for r in cmp.rows():
        t.add_row(esc(r["run"]), f(r["miou"]), f(r["pixel_acc"]), f(r["abs_err"]), f(r["rel_err"]),
                  f(r["delta_m_flat"], 2), f(r["delta_m_per_task"], 2))  # fmt: skip
    out.print(t)
    for name, b in (("segmentation", cmp.seg_baseline), ("depth", cmp.depth_baseline)):
        if b is not None:
            out.print(f"{name} baseline: {esc(b.name)} ({esc(b.source)})")
    if markdown:
        atomic_write_text(markdown, cmp.to_markdown())
        out.print(f"wrote [bold]{esc(markdown)}[/]")
    if csv_file:
        atomic_write_text(csv_file, cmp.to_csv())
        out.print(f"wrote [bold]{esc(csv_file)}[/]")
    if plot:
        cmp.plot(plot)
        out.print(f"wrote [bold]{esc(plot)}[/]")
