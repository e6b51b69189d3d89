"""``crosstask compare``."""

from __future__ import annotations

import math

from rich.table import Table

from crosstask_cli.cli.common import err, esc, handle_errors, out
from crosstask_cli.cli.options import parameter, signature, values
from crosstask_cli.compare import COMPARE_FIELDS

HELP = """Compare runs (run directories or `eval --json` files) on every compared metric of their tasks (mIoU and
pixel accuracy; abs and abs rel error; mean and median angle and the shares within 11.25°/22.5°/30° for normals),
and the multi-task gain Δm against single-task baselines in both conventions (flat mean over metrics as
Nash-MTL/FAMO; per-task mean as LibMTL), positive = better. Writes Markdown, CSV and a bar chart on request.

Several seeds: --sweep OUT/sweep.json (or --group-by on run paths) groups runs by variant and reports mean ± std
over seeds, Δm computed per seed (against the baseline variant's run of the same seed), and with --reference a
paired per-seed comparison that says whether a difference holds on every seed."""


def _compare_command(**options) -> None:
    from crosstask_cli.compare import CompareOptions, run_compare

    opts = CompareOptions(**values(COMPARE_FIELDS, options))
    cmp = run_compare(opts)
    if opts.grouped:
        _render_grouped(cmp, opts.reference)
    else:
        _render(cmp)
    for path in (opts.markdown, opts.csv_file, opts.plot):
        if path:
            out.print(f"wrote [bold]{esc(path)}[/]")


compare_command = handle_errors(_compare_command)
compare_command.__signature__ = signature(parameter(f) for f in COMPARE_FIELDS.values())  # Typer reads them here


def _f(v: float, d: int = 4) -> str:
    return "–" if not math.isfinite(v) else f"{v:.{d}f}"


def _render(cmp) -> None:
    from crosstask_cli.compare import SIGN_CONVENTION, metric_title
    from crosstask_cli.tasks import get_task

    metrics = cmp.metrics
    t = Table(title="comparison", caption=SIGN_CONVENTION, title_justify="left")
    for col in ("run", *map(metric_title, metrics), "Δm flat % ↑", "Δm per task % ↑"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for r in cmp.rows():
        t.add_row(esc(r["run"]), *(_f(r[m]) for m in metrics), _f(r["delta_m_flat"], 2), _f(r["delta_m_per_task"], 2))
    out.print(t)
    for r in cmp.runs:
        out.print(f"{esc(r.name)}: {esc(r.source)}", highlight=False)
    for task, b in (cmp.baselines or {}).items():
        out.print(f"{get_task(task).title} baseline: {esc(b.name)} ({esc(b.source)})")
    for r in [*cmp.runs, *(cmp.baselines or {}).values()]:
        if r.warning:
            err.print(f"[yellow]warning:[/] {esc(r.warning)}", highlight=False)


def _render_grouped(cmp, reference: str | None) -> None:
    from crosstask_cli.compare import metric_title, paired_text

    metrics = cmp.metrics
    runs = sum(len(v.seeds) for v in cmp.variants)
    t = Table(title=f"comparison over seeds ({runs} runs)", caption=cmp.note, title_justify="left")
    cols = ["variant", "seeds", *map(metric_title, metrics), "Δm flat % ↑", "Δm per task % ↑"]
    if reference:
        cols.append(f"Δm − {reference}")
    for col in cols:
        t.add_column(col, justify="left" if col == "variant" else "right")
    for v in cmp.variants:
        row = [esc(v.variant), str(len(v.seeds)), *(v.text(m, 4) for m in metrics), v.text("delta_m_flat", 2),
               v.text("delta_m_per_task", 2)]  # fmt: skip
        if reference:
            row.append(paired_text(v.vs_reference))
        t.add_row(*row)
    out.print(t)
