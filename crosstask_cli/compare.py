"""Compare runs and compute the multi-task gain Δm against single-task baselines.

Δm is 100 × the mean relative difference to the baseline, each metric signed so that **positive = better**
(higher mIoU and pixel accuracy, lower abs and abs rel error):
* flat (as Nash-MTL and FAMO): the mean over all four metrics;
* per task (as LibMTL): the mean over the metrics of each task, then over tasks.
(Nash-MTL/FAMO print the opposite sign, lower = better; the values are otherwise the same.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from crosstask_cli.errors import InputError

# metric → (task, +1 when higher is better, −1 when lower is better)
METRICS: dict[str, tuple[str, int]] = {
    "miou": ("segmentation", +1),
    "pixel_acc": ("segmentation", +1),
    "abs_err": ("depth", -1),
    "rel_err": ("depth", -1),
}
SIGN_CONVENTION = (
    "Δm: 100 × mean signed relative change vs. baseline; positive = better (higher mIoU/pix acc, lower errors)"
)


@dataclass
class RunMetrics:
    name: str
    source: str
    values: dict[str, float]


def _num(v) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def load_result(path: str | Path) -> RunMetrics:
    """Read an ``eval --json`` file, or a run directory (its ``eval.json`` if present, else the best epoch
    of ``metrics.csv``, i.e. validation metrics on the selection split)."""
    p = Path(path)
    if p.is_dir() and (p / "eval.json").is_file():
        p = p / "eval.json"
    if p.is_file():
        from crosstask_cli.engine.records import EvalResult

        try:
            res = EvalResult.from_dict(json.loads(p.read_text()), str(p))
        except ValueError as exc:
            raise InputError(f"{p}: not a JSON file written by `crosstask eval --json` ({exc})") from exc
        values = {k: _num(res.segmentation.get(k)) for k in ("miou", "pixel_acc")}
        values.update({k: _num(res.depth.get(k)) for k in ("abs_err", "rel_err")})
        name = p.parent.name if p.name == "eval.json" else p.stem
        return RunMetrics(name, str(p), values)
    csv_path = p / "metrics.csv"
    if p.is_dir() and csv_path.is_file():
        from crosstask_cli.engine.records import read_metrics_log

        records = read_metrics_log(csv_path)
        if not records:
            raise InputError(f"{csv_path}: no epochs logged")
        best = [r for r in records if r.best]
        record = best[-1] if best else records[-1]
        values = {k: _num(record.val.get(k)) for k in METRICS}
        return RunMetrics(p.name, f"{csv_path} (epoch {record.epoch})", values)
    raise InputError(f"{p}: neither an eval JSON file nor a run directory with metrics.csv")


def delta_m(run: dict[str, float], seg_base: dict[str, float] | None, depth_base: dict[str, float] | None) -> dict:
    """Δm of one run: {'flat', 'per_task', 'terms'} (percent; NaN where a baseline or value is missing)."""
    terms: dict[str, float] = {}
    for metric, (task, sign) in METRICS.items():
        base = seg_base if task == "segmentation" else depth_base
        if base is None:
            continue
        m, b = run.get(metric, math.nan), base.get(metric, math.nan)
        if math.isfinite(m) and math.isfinite(b) and b != 0:
            terms[metric] = sign * (m - b) / b
    if not terms:
        return {"flat": math.nan, "per_task": math.nan, "terms": terms}
    by_task: dict[str, list[float]] = {}
    for metric, value in terms.items():
        by_task.setdefault(METRICS[metric][0], []).append(value)
    flat = 100 * sum(terms.values()) / len(terms)
    per_task = 100 * sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
    return {"flat": flat, "per_task": per_task, "terms": {k: 100 * v for k, v in terms.items()}}


@dataclass
class Comparison:
    runs: list[RunMetrics]
    seg_baseline: RunMetrics | None
    depth_baseline: RunMetrics | None
    deltas: list[dict]

    def rows(self) -> list[dict]:
        out = []
        for run, d in zip(self.runs, self.deltas, strict=True):
            out.append({"run": run.name, **run.values, "delta_m_flat": d["flat"], "delta_m_per_task": d["per_task"],
                        "source": run.source})  # fmt: skip
        return out

    def to_csv(self) -> str:
        import pandas as pd

        return pd.DataFrame(self.rows()).to_csv(index=False)

    def to_markdown(self) -> str:
        def f(v: float, digits: int = 4) -> str:
            return "–" if not math.isfinite(v) else f"{v:.{digits}f}"

        lines = ["| run | mIoU ↑ | pix acc ↑ | abs err ↓ | abs rel ↓ | Δm flat (%) ↑ | Δm per task (%) ↑ |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in self.rows():
            lines.append(f"| {r['run']} | {f(r['miou'])} | {f(r['pixel_acc'])} | {f(r['abs_err'])} | {f(r['rel_err'])} "
                         f"| {f(r['delta_m_flat'], 2)} | {f(r['delta_m_per_task'], 2)} |")  # fmt: skip
        base = []
        if self.seg_baseline:
            base.append(f"segmentation baseline: {self.seg_baseline.name}")
        if self.depth_baseline:
            base.append(f"depth baseline: {self.depth_baseline.name}")
        return "\n".join(lines) + "\n\n" + SIGN_CONVENTION + (". " + "; ".join(base) if base else "") + ".\n"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from crosstask_cli.atomic import atomic_write

        rows = self.rows()
        names = [r["run"] for r in rows]
        fig, axes = plt.subplots(1, 5, figsize=(4 * 5, 3.2 + 0.15 * len(names)))
        y = np.arange(len(names))
        for ax, (key, title) in zip(axes, (("miou", "mIoU ↑"), ("pixel_acc", "pixel acc ↑"), ("abs_err", "abs err ↓"),
                                           ("rel_err", "abs rel err ↓")), strict=False):  # fmt: skip
            ax.barh(y, [r[key] for r in rows], color="tab:blue" if "↑" in title else "tab:red")
            ax.set_title(title, fontsize=10)
            ax.set_yticks(y, names if ax is axes[0] else [""] * len(names), fontsize=8)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
        ax = axes[-1]
        ax.barh(y - 0.2, [r["delta_m_flat"] for r in rows], height=0.4, label="flat (Nash-MTL/FAMO)")
        ax.barh(y + 0.2, [r["delta_m_per_task"] for r in rows], height=0.4, label="per task (LibMTL)")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title("Δm (%) ↑ positive = better", fontsize=10)
        ax.set_yticks(y, [""] * len(names))
        ax.invert_yaxis()
        ax.legend(fontsize=7)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)
        return Path(path)


def compare(
    runs: list[str | Path],
    baseline: str | Path | None = None,
    baseline_seg: str | Path | None = None,
    baseline_depth: str | Path | None = None,
) -> Comparison:
    """Load runs and baselines; ``baseline`` serves both tasks unless a task-specific one is given."""
    loaded = [load_result(r) for r in runs]
    seg = load_result(baseline_seg) if baseline_seg else (load_result(baseline) if baseline else None)
    dep = load_result(baseline_depth) if baseline_depth else (load_result(baseline) if baseline else None)
    deltas = [delta_m(r.values, seg.values if seg else None, dep.values if dep else None) for r in loaded]
    return Comparison(loaded, seg, dep, deltas)
