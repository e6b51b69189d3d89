"""Compare runs and compute the multi-task gain Δm against single-task baselines, over every task's metrics.

Δm is 100 × the mean relative difference to the baseline, each metric signed so that **positive = better** (by the
direction its task's spec gives: higher mIoU, pixel accuracy and shares within an angle; lower errors):
* flat (as Nash-MTL and FAMO): the mean over all compared metrics of the tasks with a baseline (four for seg and
  depth, nine for NYUv2 with normals);
* per task (as LibMTL): the mean over the metrics of each task, then over tasks.
(Nash-MTL/FAMO print the opposite sign, lower = better; the values are otherwise the same.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from crosstask_cli.errors import ConfigError, InputError
from crosstask_cli.options import check_positive_int, field_table, option
from crosstask_cli.tasks import all_specs, get_task

# metric → (its task's result key, +1 when higher is better, −1 when lower is better), for every compared metric
METRICS: dict[str, tuple[str, int]] = {m: (s.result_key, s.directions[m]) for s in all_specs() for m in s.compared}
TASK_OF: dict[str, str] = {m: s.name for s in all_specs() for m in s.compared}
SIGN_CONVENTION = (
    "Δm: 100 × mean signed relative change vs. baseline; positive = better (higher mIoU/pix acc/shares within an "
    "angle, lower errors)"
)


def metric_title(metric: str) -> str:
    """A table heading: the metric's short name with ↑ (higher is better) or ↓."""
    spec = get_task(TASK_OF[metric])
    return f"{spec.titles.get(metric, metric)} {'↑' if spec.directions[metric] > 0 else '↓'}"


def present_metrics(values: list[dict[str, float]]) -> list[str]:
    """The compared metrics (registry order) that at least one of ``values`` holds a finite number for: the
    columns of a table of these runs (a 2-task comparison shows no empty normal columns)."""
    return [m for m in METRICS if any(math.isfinite(_num(v.get(m))) for v in values)]


@dataclass
class RunMetrics:
    name: str
    source: str  # the file (and split, epoch) the values come from
    values: dict[str, float]
    warning: str | None = None  # e.g. an eval.json older than the run's best checkpoint


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
        flat = res.flat_metrics()
        values = {k: _num(flat.get(k)) for k in METRICS}
        name = p.parent.name if p.name == "eval.json" else p.stem
        return RunMetrics(name, f"{p} ({res.split} split)", values, _stale_eval(p))
    csv_path = p / "metrics.csv"
    if p.is_dir() and csv_path.is_file():
        from crosstask_cli.engine.records import read_metrics_log

        records = read_metrics_log(csv_path)
        if not records:
            raise InputError(f"{csv_path}: no epochs logged")
        best = [r for r in records if r.best]
        record = best[-1] if best else records[-1]
        values = {k: _num(record.val.get(k)) for k in METRICS}
        return RunMetrics(p.name, f"{csv_path} (epoch {record.epoch}, {record.val_split} split)", values)
    raise InputError(f"{p}: neither an eval JSON file nor a run directory with metrics.csv")


def _stale_eval(path: Path) -> str | None:
    """A warning when a run's ``eval.json`` is older than the checkpoints beside it (a resumed run found a new best
    after it was evaluated)."""
    if path.name != "eval.json":
        return None
    newer = [c for c in (path.parent / "checkpoints" / n for n in ("best.pt", "last.pt"))
             if c.is_file() and c.stat().st_mtime > path.stat().st_mtime]  # fmt: skip
    if not newer:
        return None
    return f"{path} is older than {newer[0]}: the run changed after it was evaluated; evaluate it again"


def _baselines(seg_base, depth_base, baselines) -> dict[str, dict[str, float]]:
    out = {"seg": seg_base, "depth": depth_base, **(baselines or {})}
    return {t: b for t, b in out.items() if b is not None}


def delta_m(
    run: dict[str, float],
    seg_base: dict[str, float] | None = None,
    depth_base: dict[str, float] | None = None,
    baselines: dict[str, dict[str, float]] | None = None,
) -> dict:
    """Δm of one run: {'flat', 'per_task', 'terms'} (percent; NaN where a baseline or value is missing).
    ``baselines``: task → the baseline's values (``seg_base``/``depth_base`` for those two); every compared metric
    of a task with a baseline whose value is finite in both counts."""
    by = _baselines(seg_base, depth_base, baselines)
    terms: dict[str, float] = {}
    for metric, (_, sign) in METRICS.items():
        base = by.get(TASK_OF[metric])
        if base is None:
            continue
        m, b = _num(run.get(metric, math.nan)), _num(base.get(metric, math.nan))
        if math.isfinite(m) and math.isfinite(b) and b != 0:
            terms[metric] = sign * (m - b) / b
    if not terms:
        return {"flat": math.nan, "per_task": math.nan, "terms": terms}
    by_task: dict[str, list[float]] = {}
    for metric, value in terms.items():
        by_task.setdefault(TASK_OF[metric], []).append(value)
    flat = 100 * sum(terms.values()) / len(terms)
    per_task = 100 * sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
    return {"flat": flat, "per_task": per_task, "terms": {k: 100 * v for k, v in terms.items()}}


def _fmt(v: float, digits: int = 4) -> str:
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


@dataclass
class Comparison:
    runs: list[RunMetrics]
    seg_baseline: RunMetrics | None
    depth_baseline: RunMetrics | None
    deltas: list[dict]
    baselines: dict[str, RunMetrics] | None = None  # task → baseline (seg and depth included)

    @property
    def metrics(self) -> list[str]:
        """The compared metrics the runs hold (the table's columns)."""
        return present_metrics([r.values for r in self.runs])

    def rows(self) -> list[dict]:
        out = []
        for run, d in zip(self.runs, self.deltas, strict=True):
            values = {m: run.values.get(m, math.nan) for m in self.metrics}
            out.append({"run": run.name, **values, "delta_m_flat": d["flat"], "delta_m_per_task": d["per_task"],
                        "source": run.source})  # fmt: skip
        return out

    def to_csv(self) -> str:
        import pandas as pd

        return pd.DataFrame(self.rows()).to_csv(index=False)

    def to_markdown(self) -> str:
        metrics = self.metrics
        head = ["run", *map(metric_title, metrics), "Δm flat (%) ↑", "Δm per task (%) ↑"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows():
            cells = [r["run"], *(_fmt(r[m]) for m in metrics), _fmt(r["delta_m_flat"], 2),
                     _fmt(r["delta_m_per_task"], 2)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        base = [f"{get_task(t).title} baseline: {b.name}" for t, b in (self.baselines or {}).items()]
        return "\n".join(lines) + "\n\n" + SIGN_CONVENTION + (". " + "; ".join(base) if base else "") + ".\n"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from crosstask_cli.atomic import atomic_write

        rows = self.rows()
        names = [r["run"] for r in rows]
        metrics = self.metrics
        with_delta = any(math.isfinite(r["delta_m_flat"]) for r in rows)  # no Δm panel without baselines
        panels = len(metrics) + with_delta
        fig, axes, first = panel_grid(plt, panels, 3.2 + 0.15 * len(names))
        y = np.arange(len(names))
        for ax, key in zip(axes, metrics, strict=False):
            title = metric_title(key)
            ax.barh(y, [r[key] for r in rows], color="tab:blue" if "↑" in title else "tab:red")
            ax.set_title(title, fontsize=10)
            ax.set_yticks(y, names if ax in first else [""] * len(names), fontsize=8)
            ax.set_ylim(len(names) - 0.5, -0.5)  # every panel the same rows, top down (NaN bars would move the limits)
            ax.grid(axis="x", alpha=0.3)
        if with_delta:
            ax = axes[-1]
            ax.barh(y - 0.2, [r["delta_m_flat"] for r in rows], height=0.4, label="flat (Nash-MTL/FAMO)")
            ax.barh(y + 0.2, [r["delta_m_per_task"] for r in rows], height=0.4, label="per task (LibMTL)")
            ax.axvline(0, color="black", lw=0.8)
            ax.set_title("Δm (%) ↑ positive = better", fontsize=10)
            ax.set_yticks(y, names if ax in first else [""] * len(names), fontsize=8)
            ax.set_ylim(len(names) - 0.5, -0.5)  # every panel the same rows, top down (NaN bars would move the limits)
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
    baselines: dict[str, str | Path] | None = None,
) -> Comparison:
    """Load runs and baselines; ``baseline`` serves every task unless a task-specific one is given
    (``baseline_seg``, ``baseline_depth``, or ``baselines``: task → run or eval JSON)."""
    loaded = [load_result(r) for r in runs]
    given = {t: b for t, b in {"seg": baseline_seg, "depth": baseline_depth, **(baselines or {})}.items() if b}
    for task in given:
        get_task(task)  # ConfigError for an unknown task
    tasks = {TASK_OF[m] for m in present_metrics([r.values for r in loaded])} | set(given)
    cache: dict[str, RunMetrics] = {}
    base = {}
    for t in (spec.name for spec in all_specs() if spec.name in tasks):
        path = given.get(t) or baseline
        if path is not None:
            base[t] = cache.setdefault(str(path), load_result(path))
    deltas = [delta_m(r.values, baselines={t: b.values for t, b in base.items()}) for r in loaded]
    return Comparison(loaded, base.get("seg"), base.get("depth"), deltas, base)


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
    from crosstask_cli.sweep import MANIFEST, manifest_run_dir, read_manifest

    path = Path(manifest)
    path = path / MANIFEST if path.is_dir() else path
    d = read_manifest(path, missing_ok=False)
    out = []
    for row in d["runs"]:
        if row.get("status") != "done":
            continue
        run_dir = manifest_run_dir(path, row)
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
    """One variant over its seeds: per-seed values (seed order) of every compared metric and of Δm."""

    variant: str
    seeds: list[int]
    values: dict[str, list[float]]  # the compared metrics, delta_m_flat, delta_m_per_task
    vs_reference: dict | None = None

    def mean_std(self, key: str) -> tuple[float, float]:
        return _mean_std(self.values[key])

    def text(self, key: str, digits: int) -> str:
        """``mean ± std`` (just the mean for one seed, – when undefined)."""
        m, s = self.mean_std(key)
        if not math.isfinite(m):
            return "–"
        return f"{m:.{digits}f} ± {s:.{digits}f}" if math.isfinite(s) else f"{m:.{digits}f}"


DELTA_KEYS = ("delta_m_flat", "delta_m_per_task")


@dataclass
class GroupedComparison:
    variants: list[VariantStats]
    seg_baseline: str | None
    depth_baseline: str | None
    reference: str | None
    note: str

    @property
    def metrics(self) -> list[str]:
        """The compared metrics some variant holds (the table's columns)."""
        return [m for m in METRICS if any(math.isfinite(x) for v in self.variants for x in v.values.get(m, []))]

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.metrics, *DELTA_KEYS)

    def rows(self) -> list[dict]:
        rows = []
        for v in self.variants:
            row = {"variant": v.variant, "seeds": len(v.seeds)}
            for k in self.keys:
                row[f"{k}_mean"], row[f"{k}_std"] = v.mean_std(k)
            if v.vs_reference:
                row.update({f"vs_ref_{k}": val for k, val in v.vs_reference.items()})
            rows.append(row)
        return rows

    def to_csv(self) -> str:
        import pandas as pd

        return pd.DataFrame(self.rows()).to_csv(index=False)

    def to_markdown(self) -> str:
        metrics = self.metrics
        head = ["variant", "seeds", *map(metric_title, metrics), "Δm flat (%) ↑", "Δm per task (%) ↑"]
        if self.reference:
            head.append(f"Δm flat − {self.reference} (paired)")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in self.variants:
            cells = [v.variant, str(len(v.seeds)), *(v.text(m, 4) for m in metrics), v.text("delta_m_flat", 2),
                     v.text("delta_m_per_task", 2)]  # fmt: skip
            if self.reference:
                cells.append(paired_text(v.vs_reference))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + self.note + "\n"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from crosstask_cli.atomic import atomic_write

        names = [v.variant for v in self.variants]
        panels = [(m, metric_title(m)) for m in self.metrics]
        if any(math.isfinite(x) for v in self.variants for x in v.values["delta_m_flat"]):
            panels.append(("delta_m_flat", "Δm flat (%) ↑"))  # no Δm panel without baselines
        fig, axes, first = panel_grid(plt, len(panels), 3.2 + 0.18 * len(names))
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
            ax.set_yticks(y, names if ax in first else [""] * len(names), fontsize=8)
            ax.set_ylim(len(names) - 0.5, -0.5)  # every panel the same rows, top down (NaN bars would move the limits)
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle("mean ± std over seeds (dots: single seeds)", fontsize=10)
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)
        return Path(path)


PANELS_PER_ROW = 5  # nine metrics of three tasks and Δm wrap into two rows instead of one 40-inch strip


def panel_grid(plt, panels: int, row_height: float):
    """A figure of ``panels`` bar panels, at most :data:`PANELS_PER_ROW` a row: (figure, the axes in reading
    order, the axes of the first column, which carry the names)."""
    cols = min(panels, PANELS_PER_ROW)
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4 * cols, row_height * rows), squeeze=False)
    for ax in grid.flat[panels:]:
        ax.remove()
    return fig, list(grid.flat[:panels]), set(grid[:, 0])


def paired_text(p: dict | None) -> str:
    if not p:
        return "–"
    if p.get("same_metrics") is False:
        return "other metrics"
    if p.get("pairs", 0) == 0:
        return "no common seeds"
    verdict = "consistent" if p["consistent"] else "mixed"
    return f"{p['mean_diff']:+.2f} ({p['better']}/{p['pairs']} seeds better, {verdict})"


def compare_grouped(
    runs: list[SeededRun],
    baseline_seg: str | Path | None = None,
    baseline_depth: str | Path | None = None,
    reference: str | None = None,
    baselines: dict[str, str | Path] | None = None,
) -> GroupedComparison:
    """Group runs by variant: per-seed metrics and Δm, mean ± std. A baseline that names a variant is taken per
    seed (the baseline run of the same seed; the mean of its seeds where that seed is missing); any other baseline
    is a run directory or eval JSON used for every seed. ``baselines``: task → baseline for tasks other than seg
    and depth (normal). ``reference``: a variant every other is paired with, seed by seed, on Δm flat (mean
    difference, seeds where it is better, and whether all seeds agree in sign)."""
    by_variant = _by_variant(runs)
    if reference is not None and reference not in by_variant:
        raise InputError(f"--reference {reference!r} is not among the variants ({', '.join(by_variant)})")
    given = {t: b for t, b in {"seg": baseline_seg, "depth": baseline_depth, **(baselines or {})}.items() if b}
    for task in given:
        get_task(task)
    by_task = {t: _baseline_for(b, by_variant) for t, b in given.items()}
    names = {str(b) for b in given.values()}
    stats = [_variant_stats(v, seeds, by_task, v in names) for v, seeds in by_variant.items()]
    if reference is not None:
        _pair_with(stats, next(s for s in stats if s.variant == reference), names)
    parts = [SIGN_CONVENTION, "mean ± sample standard deviation over seeds; Δm computed per seed"]
    if given:
        listed = ", ".join(f"{get_task(t).title} {b}" for t, b in given.items())
        parts.append(f"baselines: {listed} (per seed when a variant of these runs, else fixed)")
    if reference is not None:
        parts.append(
            f"paired: Δm flat minus {reference}'s on the same seed, for variants with its metrics; "
            "consistent = every seed agrees in sign"
        )
    return GroupedComparison(stats, str(baseline_seg) if baseline_seg else None,
                             str(baseline_depth) if baseline_depth else None, reference, ". ".join(parts) + ".")  # fmt: skip


def _by_variant(runs: list[SeededRun]) -> dict[str, dict[int, RunMetrics]]:
    by_variant: dict[str, dict[int, RunMetrics]] = {}
    for r in runs:
        seeds = by_variant.setdefault(r.variant, {})
        if r.seed in seeds:
            raise InputError(
                f"two runs of variant {r.variant!r} with seed {r.seed}: {seeds[r.seed].source}, {r.metrics.source}"
            )
        seeds[r.seed] = r.metrics
    return by_variant


def _baseline_for(spec: str | Path, by_variant: dict[str, dict[int, RunMetrics]]):
    """seed → the baseline's values: a variant's run of that seed (the mean of its seeds where it has none), or a
    fixed run or eval JSON."""
    if str(spec) in by_variant:
        runs_of = by_variant[str(spec)]
        mean = {m: _mean_std([r.values.get(m, math.nan) for r in runs_of.values()])[0] for m in METRICS}
        return lambda seed: runs_of[seed].values if seed in runs_of else mean
    fixed = load_result(spec).values
    return lambda seed: fixed


def _variant_stats(variant: str, seeds: dict[int, RunMetrics], by_task: dict, is_baseline: bool) -> VariantStats:
    order = sorted(seeds)
    values: dict[str, list[float]] = {k: [] for k in (*METRICS, *DELTA_KEYS)}
    for s in order:
        v = seeds[s].values
        if is_baseline:  # a baseline against itself says nothing: no Δm, no pairing
            d = {"flat": math.nan, "per_task": math.nan}
        else:
            d = delta_m(v, baselines={t: f(s) for t, f in by_task.items()})
        for k in METRICS:
            values[k].append(v.get(k, math.nan))
        values["delta_m_flat"].append(d["flat"])
        values["delta_m_per_task"].append(d["per_task"])
    return VariantStats(variant, order, values)


def _pair_with(stats: list[VariantStats], ref: VariantStats, baselines: set[str]) -> None:
    """Set every other variant's ``vs_reference``: its Δm flat minus the reference's, seed by seed. Only a variant
    with the reference's metrics is paired: a Δm over other metrics (a 2-task variant against a 3-task reference)
    is another average, and its difference would mean nothing."""
    ref_by_seed = dict(zip(ref.seeds, ref.values["delta_m_flat"], strict=True))
    for s in stats:
        if s is ref or s.variant in baselines:
            continue
        if _measured(s) != _measured(ref):
            s.vs_reference = {"pairs": 0, "same_metrics": False}
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


def _measured(stats: VariantStats) -> frozenset[str]:
    """The compared metrics a variant has values of (those of its tasks)."""
    return frozenset(k for k in METRICS if any(math.isfinite(x) for x in stats.values[k]))


# --- the command as a function ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CompareOptions:
    """What ``crosstask compare`` compares and writes."""

    runs: tuple[Path, ...] = option((), "Run directories or eval JSON files.", argument=True, cli_type=Path)
    sweep: Path | None = option(
        None, "A sweep manifest (OUT/sweep.json or OUT): its finished runs, grouped by variant."
    )
    group_by: str | None = option(
        None,
        "Group the given runs by a regular expression searched in each path: group 'variant' (or the first) names the "
        "variant, 'seed' the seed. 'sweep' means (?P<variant>[^/]+)/seed-(?P<seed>\\d+), a sweep's layout.",
    )
    reference: str | None = option(
        None, "With groups: pair every variant with this one seed by seed (Δm flat difference)."
    )
    last_k: int | None = option(
        None,
        "Use the mean of each run's last K epochs of validation metrics (metrics.csv, the run's validation split) "
        "instead of its eval.json / selected epoch, as the Nash-MTL/FAMO protocol averages the last epochs.",
    )
    baseline: Path | None = option(None, "One baseline for every task.")
    baseline_seg: str | None = option(
        None, "Single-task segmentation baseline (mIoU, pix acc): a run or eval JSON, or with groups a variant name."
    )
    baseline_depth: str | None = option(
        None, "Single-task depth baseline (abs, abs rel): a run or eval JSON, or with groups a variant name."
    )
    task_baselines: tuple[str, ...] = option(
        (),
        "A single-task baseline of another task, e.g. normal=runs/normal-only (repeatable; a run or eval JSON, or with "
        "groups a variant name).",
        flag="--task-baseline",
        metavar="TASK=RUN",
        cli_type=list[str],
    )
    markdown: Path | None = option(None, "Write the table as Markdown.")
    csv_file: Path | None = option(None, "Write the table as CSV.", flag="--csv")
    plot: Path | None = option(None, "Write a bar chart (PNG).")

    def __post_init__(self) -> None:
        from crosstask_cli.outputs import check_output_file

        if self.plot is not None and Path(self.plot).suffix.lower() != ".png":
            raise ConfigError(f"--plot {self.plot}: expected a .png file name")
        if self.sweep is not None and (self.runs or self.group_by):
            raise ConfigError("--sweep reads the runs from the manifest: give no run paths and no --group-by")
        if not self.grouped and (self.reference or self.last_k):
            raise ConfigError("--reference and --last-k apply to grouped runs (--sweep or --group-by)")
        if not self.runs and self.sweep is None:
            raise ConfigError("give run directories / eval JSON files, or --sweep OUT/sweep.json")
        if self.last_k is not None:
            check_positive_int(self.last_k, "--last-k")
        inputs = {f"run {i}": r for i, r in enumerate(self.runs, 1)} | {"--sweep": self.sweep}
        inputs |= {"--baseline": self.baseline, "--baseline-seg": self.baseline_seg,
                   "--baseline-depth": self.baseline_depth}  # fmt: skip
        inputs |= {f"--task-baseline {t}": b for t, b in self.other_baselines().items()}
        for flag, path in (("--markdown", self.markdown), ("--csv", self.csv_file), ("--plot", self.plot)):
            check_output_file(path, flag, inputs)

    @property
    def grouped(self) -> bool:
        return self.sweep is not None or self.group_by is not None

    def other_baselines(self) -> dict[str, str]:
        """``--task-baseline TASK=RUN`` entries → {task: run}."""
        out = {}
        for entry in self.task_baselines:
            task, sep, path = str(entry).partition("=")
            if not sep or not path:
                raise ConfigError(f"--task-baseline {entry!r}: expected TASK=RUN, e.g. normal=runs/normal-only")
            get_task(task.strip())
            out[task.strip()] = path
        return out


COMPARE_FIELDS = field_table(CompareOptions)


def run_compare(opts: CompareOptions) -> Comparison | GroupedComparison:
    """The comparison ``opts`` asks for (plain, or grouped over seeds), with its Markdown, CSV and PNG written."""
    extra = opts.other_baselines()
    if opts.grouped:
        if opts.sweep is not None:
            seeded = runs_from_sweep(opts.sweep, opts.last_k)
        else:
            rule = DEFAULT_GROUP_BY if opts.group_by == "sweep" else opts.group_by
            seeded = runs_from_paths(list(opts.runs), rule, opts.last_k)
        cmp = compare_grouped(seeded, opts.baseline_seg or opts.baseline, opts.baseline_depth or opts.baseline,
                              opts.reference, extra)  # fmt: skip
    else:
        cmp = compare(list(opts.runs), opts.baseline, opts.baseline_seg, opts.baseline_depth, extra)
    write_outputs(cmp, opts.markdown, opts.csv_file, opts.plot)
    return cmp


def write_outputs(cmp, markdown: Path | None, csv_file: Path | None, plot: Path | None) -> list[Path]:
    """Write a comparison (plain or grouped) as Markdown, CSV and PNG, where asked; returns what was written."""
    from crosstask_cli.atomic import atomic_write_text

    written = []
    for path, write in ((markdown, lambda p: atomic_write_text(p, cmp.to_markdown())),
                        (csv_file, lambda p: atomic_write_text(p, cmp.to_csv())), (plot, cmp.plot)):  # fmt: skip
        if path:
            write(path)
            written.append(Path(path))
    return written
