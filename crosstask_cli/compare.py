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


# --- several seeds per variant ---------------------------------------------------------------------------------

DEFAULT_GROUP_BY = r"(?P<variant>[^/]+)/seed-(?P<seed>\d+)"  # a sweep's OUT/<variant>/seed-<seed> layout


@dataclass
class SeededRun:
    variant: str
    seed: int
    metrics: RunMetrics


def load_last_k(path: str | Path, k: int) -> RunMetrics:
    """The mean of the last ``k`` epochs' validation metrics of a run directory's ``metrics.csv`` (the protocol of
    Nash-MTL/FAMO: average the last epochs instead of trusting one selected checkpoint). They are measured on
    the run's validation split (``val_split`` of the log, e.g. ``holdout``)."""
    from crosstask_cli.engine.records import read_metrics_log

    p = Path(path)
    p = p.parent if p.name == "eval.json" else p
    csv_path = p / "metrics.csv"
    if not csv_path.is_file():
        raise InputError(f"{p}: --last-k needs a run directory with metrics.csv")
    records = read_metrics_log(csv_path)
    if len(records) < k:
        raise InputError(f"{csv_path}: --last-k {k} but only {len(records)} epoch(s) logged")
    last = records[-k:]
    values = {}
    for metric in METRICS:
        vals = [_num(r.val.get(metric)) for r in last]
        values[metric] = sum(vals) / k if all(math.isfinite(v) for v in vals) else math.nan
    split = last[-1].val_split
    return RunMetrics(p.name, f"{csv_path} (mean of epochs {last[0].epoch}–{last[-1].epoch}, {split})", values)


def runs_from_sweep(manifest: str | Path, last_k: int | None = None) -> list[SeededRun]:
    """The finished runs of a sweep manifest (``sweep.json``), with their variant and seed."""
    from crosstask_cli.sweep import MANIFEST, read_manifest

    path = Path(manifest)
    path = path / MANIFEST if path.is_dir() else path
    d = read_manifest(path, missing_ok=False)
    out = []
    for row in d["runs"]:
        if row.get("status") != "done":
            continue
        run_dir = Path(row["run_dir"])
        if not run_dir.exists():  # relative to where the sweep ran: runs sit beside the manifest
            run_dir = path.parent / row["variant"] / f"seed-{row['seed']}"
        metrics = load_last_k(run_dir, last_k) if last_k else load_result(run_dir)
        out.append(SeededRun(row["variant"], int(row["seed"]), metrics))
    if not out:
        raise InputError(f"{path}: no finished runs yet")
    return out


def runs_from_paths(
    paths: list[str | Path], group_by: str = DEFAULT_GROUP_BY, last_k: int | None = None
) -> list[SeededRun]:
    """Runs grouped by a regular expression searched in each path (as written with / separators): group
    ``variant`` (else the first group) names the variant, ``seed`` (optional) the seed; without it, runs of a
    variant are numbered in the order given."""
    import re

    try:
        rule = re.compile(group_by)
    except re.error as exc:
        raise InputError(f"--group-by {group_by!r}: not a regular expression ({exc})") from exc
    if rule.groups < 1:
        raise InputError(f"--group-by {group_by!r}: needs a group for the variant, e.g. (?P<variant>[^/]+)/seed-")
    out, counters = [], {}
    for p in paths:
        text = Path(p).resolve().as_posix() if Path(p).exists() else str(p)
        m = rule.search(text)
        if m is None:
            raise InputError(f"{p}: --group-by {group_by!r} does not match this path")
        groups = m.groupdict()
        variant = groups.get("variant") or m.group(1)
        if groups.get("seed") is not None:
            seed = int(groups["seed"])
        else:
            seed = counters.get(variant, 0)
            counters[variant] = seed + 1
        metrics = load_last_k(p, last_k) if last_k else load_result(p)
        out.append(SeededRun(variant, seed, metrics))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))  # sample std (n − 1)


@dataclass
class VariantStats:
    """One variant over its seeds: per-seed values (seed order) of every metric and of Δm."""

    variant: str
    seeds: list[int]
    values: dict[str, list[float]]  # miou, pixel_acc, abs_err, rel_err, delta_m_flat, delta_m_per_task
    vs_reference: dict | None = None

    def mean_std(self, key: str) -> tuple[float, float]:
        return _mean_std(self.values[key])

    def text(self, key: str, digits: int) -> str:
        """``mean ± std`` (just the mean for one seed, – when undefined)."""
        m, s = self.mean_std(key)
        if not math.isfinite(m):
            return "–"
        return f"{m:.{digits}f} ± {s:.{digits}f}" if math.isfinite(s) else f"{m:.{digits}f}"


@dataclass
class GroupedComparison:
    variants: list[VariantStats]
    seg_baseline: str | None
    depth_baseline: str | None
    reference: str | None
    note: str

    KEYS = ("miou", "pixel_acc", "abs_err", "rel_err", "delta_m_flat", "delta_m_per_task")

    def rows(self) -> list[dict]:
        rows = []
        for v in self.variants:
            row = {"variant": v.variant, "seeds": len(v.seeds)}
            for k in self.KEYS:
                row[f"{k}_mean"], row[f"{k}_std"] = v.mean_std(k)
            if v.vs_reference:
                row.update({f"vs_ref_{k}": val for k, val in v.vs_reference.items()})
            rows.append(row)
        return rows

    def to_csv(self) -> str:
        import pandas as pd

        return pd.DataFrame(self.rows()).to_csv(index=False)

    def to_markdown(self) -> str:
        head = "| variant | seeds | mIoU ↑ | pix acc ↑ | abs err ↓ | abs rel ↓ | Δm flat (%) ↑ | Δm per task (%) ↑ |"
        sep = "|---|---|---|---|---|---|---|---|"
        if self.reference:
            head += f" Δm flat − {self.reference} (paired) |"
            sep += "---|"
        lines = [head, sep]
        for v in self.variants:
            line = (f"| {v.variant} | {len(v.seeds)} | {v.text('miou', 4)} | {v.text('pixel_acc', 4)} | "
                    f"{v.text('abs_err', 4)} | {v.text('rel_err', 4)} | {v.text('delta_m_flat', 2)} | "
                    f"{v.text('delta_m_per_task', 2)} |")  # fmt: skip
            if self.reference:
                line += f" {paired_text(v.vs_reference)} |"
            lines.append(line)
        return "\n".join(lines) + "\n\n" + self.note + "\n"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from crosstask_cli.atomic import atomic_write

        names = [v.variant for v in self.variants]
        panels = (("miou", "mIoU ↑"), ("pixel_acc", "pixel acc ↑"), ("abs_err", "abs err ↓"), ("rel_err", "abs rel err ↓"),
                  ("delta_m_flat", "Δm flat (%) ↑"))  # fmt: skip
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2 + 0.18 * len(names)))
        y = np.arange(len(names))
        for ax, (key, title) in zip(axes, panels, strict=True):
            stats = [v.mean_std(key) for v in self.variants]
            means = [m for m, _ in stats]
            errs = [0 if not math.isfinite(s) else s for _, s in stats]
            colour = "tab:green" if key.startswith("delta") else "tab:blue" if "↑" in title else "tab:red"
            ax.barh(y, means, xerr=errs, color=colour, alpha=0.8, capsize=3)
            for v_i, v in enumerate(self.variants):  # every seed as a dot
                ax.plot(v.values[key], [v_i] * len(v.values[key]), "k.", ms=3)
            if key.startswith("delta"):
                ax.axvline(0, color="black", lw=0.8)
            ax.set_title(title, fontsize=10)
            ax.set_yticks(y, names if ax is axes[0] else [""] * len(names), fontsize=8)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle("mean ± std over seeds (dots: single seeds)", fontsize=10)
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)
        return Path(path)


def paired_text(p: dict | None) -> str:
    if not p:
        return "–"
    if p.get("pairs", 0) == 0:
        return "no common seeds"
    verdict = "consistent" if p["consistent"] else "mixed"
    return f"{p['mean_diff']:+.2f} ({p['better']}/{p['pairs']} seeds better, {verdict})"


def compare_grouped(
    runs: list[SeededRun],
    baseline_seg: str | Path | None = None,
    baseline_depth: str | Path | None = None,
    reference: str | None = None,
) -> GroupedComparison:
    """Group runs by variant: per-seed metrics and Δm, mean ± std. A baseline that names a variant is taken per
    seed (the baseline run of the same seed; the mean of its seeds where that seed is missing); any other baseline
    is a run directory or eval JSON used for every seed. ``reference``: a variant every other is paired with, seed
    by seed, on Δm flat (mean difference, seeds where it is better, and whether all seeds agree in sign)."""
    by_variant: dict[str, dict[int, RunMetrics]] = {}
    for r in runs:
        seeds = by_variant.setdefault(r.variant, {})
        if r.seed in seeds:
            raise InputError(
                f"two runs of variant {r.variant!r} with seed {r.seed}: {seeds[r.seed].source}, {r.metrics.source}"
            )
        seeds[r.seed] = r.metrics
    if reference is not None and reference not in by_variant:
        raise InputError(f"--reference {reference!r} is not among the variants ({', '.join(by_variant)})")

    def baseline_for(spec: str | Path | None):
        if spec is None:
            return None
        if str(spec) in by_variant:
            runs_of = by_variant[str(spec)]
            mean = {m: _mean_std([r.values.get(m, math.nan) for r in runs_of.values()])[0] for m in METRICS}
            return lambda seed: runs_of[seed].values if seed in runs_of else mean
        fixed = load_result(spec).values
        return lambda seed: fixed

    seg_b, dep_b = baseline_for(baseline_seg), baseline_for(baseline_depth)
    baselines = {str(b) for b in (baseline_seg, baseline_depth) if b is not None}
    stats = []
    for variant, seeds in by_variant.items():
        order = sorted(seeds)
        values: dict[str, list[float]] = {k: [] for k in GroupedComparison.KEYS}
        for s in order:
            v = seeds[s].values
            if variant in baselines:  # a baseline against itself says nothing: no Δm, no pairing
                d = {"flat": math.nan, "per_task": math.nan}
            else:
                d = delta_m(v, seg_b(s) if seg_b else None, dep_b(s) if dep_b else None)
            for k in METRICS:
                values[k].append(v.get(k, math.nan))
            values["delta_m_flat"].append(d["flat"])
            values["delta_m_per_task"].append(d["per_task"])
        stats.append(VariantStats(variant, order, values))
    if reference is not None:
        ref = next(s for s in stats if s.variant == reference)
        ref_by_seed = dict(zip(ref.seeds, ref.values["delta_m_flat"], strict=True))
        for s in stats:
            if s is ref or s.variant in baselines:
                continue
            diffs = [v - ref_by_seed[seed] for seed, v in zip(s.seeds, s.values["delta_m_flat"], strict=True)
                     if seed in ref_by_seed and math.isfinite(v) and math.isfinite(ref_by_seed[seed])]  # fmt: skip
            mean, std = _mean_std(diffs)
            s.vs_reference = {
                "pairs": len(diffs),
                "mean_diff": mean,
                "std_diff": std,
                "better": sum(d > 0 for d in diffs),
                "consistent": len(diffs) >= 2 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)),
            }
    parts = [SIGN_CONVENTION, "mean ± sample standard deviation over seeds; Δm computed per seed"]
    if baseline_seg is not None or baseline_depth is not None:
        parts.append(f"baselines: segmentation {baseline_seg or '–'}, depth {baseline_depth or '–'} (per seed when a "
                     "variant of these runs, else fixed)")  # fmt: skip
    if reference is not None:
        parts.append(f"paired: Δm flat minus {reference}'s on the same seed; consistent = every seed agrees in sign")
    return GroupedComparison(stats, str(baseline_seg) if baseline_seg else None,
                             str(baseline_depth) if baseline_depth else None, reference, ". ".join(parts) + ".")  # fmt: skip
