"""``crosstask bench``: speed and memory of the model, the data path and the metrics, measured in one run.

Every figure that is compared is measured in the same process, so ratios stay meaningful on a shared, noisy
machine: the training step against an fp32 matmul (the machine's practical peak), direct-only prediction against
the full forward, the prepared loader against decoding raw PNGs, vectorised metrics against a per-image,
per-class loop (kept here as the baseline).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crosstask_cli.bench_options import MAX_OTHERS, WEIGHTING_TARGETS, BenchConfig

# Targets of the speed issue (ResNet-34, 7 classes, 128×256, batch 8, CPU). "peak_rss_gb" and
# "metrics_share_of_eval" are upper bounds, the others lower bounds.
TARGETS = {
    "train_vs_matmul": 0.85,
    "direct_vs_full_forward": 2.5,
    "loader_vs_raw_png": 100.0,
    "loader_vs_train_step": 10.0,
    "metrics_share_of_eval": 0.01,
    "energy_share_of_eval": 0.10,
    "peak_rss_gb": 6.0,
}
UPPER_BOUNDS = ("peak_rss_gb", "metrics_share_of_eval", "energy_share_of_eval")


def is_upper_bound(target: str) -> bool:
    return target in UPPER_BOUNDS or target.startswith("weighting_")


# the timings each target's ratio is made of (a noisy one makes the target unjudgeable)
TARGET_TIMINGS = {
    "train_vs_matmul": ("train_step", "matmul"),
    "direct_vs_full_forward": ("forward_full", "forward_direct"),
    "loader_vs_raw_png": ("loader", "raw_png"),
    "loader_vs_train_step": ("loader", "train_step"),
    "metrics_share_of_eval": ("metrics_standard", "forward_full"),
    "energy_share_of_eval": ("energy_update", "eval_batch"),
}
LOAD_WINDOW_S = 0.25  # shortest span the load of other processes is measured over


class LoadProbe:
    """How many cores *other* processes kept busy between two marks: the machine's busy time (``/proc/stat``,
    steal included) less this process's own CPU time (its threads and waited-for children), over the wall time.
    ``available`` is False where ``/proc/stat`` does not exist (then nothing is filtered)."""

    def __init__(self) -> None:
        self.available = self._busy() is not None

    @staticmethod
    def _busy() -> float | None:
        import os

        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def mark(self) -> tuple[float, float, float]:
        import os

        t = os.times()
        return (self._busy() or 0.0, t.user + t.system + t.children_user + t.children_system, time.monotonic())

    def others_since(self, mark: tuple[float, float, float]) -> float:
        """Cores other processes used since ``mark`` (≥ 0; 0 when unavailable)."""
        if not self.available:
            return 0.0
        busy, own, wall = self.mark()
        elapsed = max(wall - mark[2], 1e-6)
        return max(0.0, ((busy - mark[0]) - (own - mark[1])) / elapsed)

    def wait_for_quiet(self, max_others: float, limit_s: float, window_s: float = 0.5) -> tuple[float, bool]:
        """Wait (up to ``limit_s``) for a ``window_s`` in which others use at most ``max_others`` cores; returns
        (seconds waited, whether it is quiet)."""
        start = time.monotonic()
        while True:
            m = self.mark()
            time.sleep(window_s)
            if self.others_since(m) <= max_others:
                return time.monotonic() - start, True
            if time.monotonic() - start >= limit_s:
                return time.monotonic() - start, False


@dataclass
class Timing:
    """Timed repetitions; ``others``: cores other processes used during each; ``kept``: the repetitions whose
    ``others`` stayed under the limit. Statistics are over the kept ones (all of them when fewer than 3 were
    kept, then ``noisy``)."""

    seconds: list[float]
    others: list[float] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    wanted: int = 0  # clean repetitions asked for

    @property
    def clean(self) -> list[float]:
        if not self.kept:
            return self.seconds
        clean = [s for s, k in zip(self.seconds, self.kept, strict=True) if k]
        return clean if len(clean) >= 3 or len(clean) == len(self.seconds) else self.seconds

    @property
    def noisy(self) -> bool:
        """Fewer clean repetitions than asked for could be had: the figure says more about the machine's load."""
        return bool(self.kept) and sum(self.kept) < min(self.wanted or len(self.seconds), len(self.seconds))

    @property
    def median(self) -> float:
        return statistics.median(self.clean)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = ±5 % noise)."""
        values = self.clean
        if len(values) < 4:
            return (max(values) - min(values)) / self.median
        q = statistics.quantiles(values, n=4)
        return (q[2] - q[0]) / self.median

    def to_dict(self) -> dict:
        return {"median_s": self.median, "spread": self.spread, "runs": len(self.seconds), "kept": sum(self.kept)
                if self.kept else len(self.seconds), "noisy": self.noisy, "all_s": self.seconds,
                "others_cores": self.others}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(
    fn: Callable[[], object],
    runs: int,
    warmup: int,
    device: torch.device,
    probe: LoadProbe | None = None,
    max_others: float = MAX_OTHERS,
    max_attempts: int | None = None,
) -> Timing:
    """``runs`` timings of one call each, after ``warmup`` untimed calls, synchronising CUDA around each.

    With a ``probe``, a repetition during which other processes used more than ``max_others`` cores is dropped
    and repeated, up to ``max_attempts`` (default 3 × runs) in all; the Timing says how many were kept.

    Not ``torch.utils.benchmark.Timer``: its ``timeit`` runs at least two untimed calls before every measurement
    (3× the cost of a multi-second CPU training step per timed run), and ``blocked_autorange`` times blocks, not the
    single calls whose spread is reported here; neither knows about other processes."""
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds, others, kept = [], [], []
    attempts = max_attempts or 3 * runs
    # /proc/stat counts in clock ticks (10 ms): the load of a run shorter than a window is measured over the
    # window of consecutive runs it belongs to, and judged with them
    window, pending, mark = LOAD_WINDOW_S, 0, probe.mark() if probe is not None else None
    while sum(kept) + pending < runs or pending:
        if len(seconds) >= (attempts if probe is not None else runs):
            break
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
        pending += 1
        if probe is None:
            others.append(0.0)
            kept.append(True)
            pending = 0
        elif time.monotonic() - mark[2] >= window or sum(kept) + pending >= runs:
            load = probe.others_since(mark)
            others.extend([load] * pending)
            kept.extend([load <= max_others] * pending)
            pending, mark = 0, probe.mark()
    if pending:  # attempts ran out inside a window
        load = probe.others_since(mark)
        others.extend([load] * pending)
        kept.extend([load <= max_others] * pending)
    return Timing(seconds, others, kept, wanted=runs)


def matmul_gflops(
    device: torch.device, n: int = 4096, runs: int = 5, res: BenchResult | None = None
) -> tuple[float, Timing]:
    """fp32 n×n matmul throughput (GFLOP/s), the reference for how fast this machine multiplies."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = res.time("matmul", lambda: a @ b, runs, 1, device) if res else time_it(lambda: a @ b, runs, 1, device)
    return 2 * n**3 / t.median / 1e9, t


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB. On Linux from ``VmHWM`` (/proc/self/status): ``ru_maxrss`` also
    counts the memory of the process this one was forked from before it exec'd, so a fresh child of a large parent
    would report the parent's peak (every architecture the same 3.4 GB in the first measurement of ``--part archs``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


@dataclass
class BenchResult:
    config: dict
    device: str
    figures: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)
    noisy: list[str] = field(default_factory=list)  # timings with too few clean repetitions
    probe: LoadProbe | None = field(default=None, repr=False)

    def time(self, name: str, fn: Callable[[], object], runs: int, warmup: int, device: torch.device) -> Timing:
        """:func:`time_it` with this run's load probe; a noisy timing is remembered under ``name``."""
        t = time_it(fn, runs, warmup, device, self.probe, self.config.get("max_others", MAX_OTHERS))
        if t.noisy:
            self.noisy.append(name)
        return t

    def targets(self) -> dict[str, tuple[float, float, str]]:
        """name → (measured, target, status): ``met``, ``not met``, or ``noisy machine`` when a timing the ratio is
        made of kept too few clean repetitions (then the figure says more about the load than the code)."""
        out = {}
        for name, target in TARGETS.items():
            value = self.figures.get(name) if name == "peak_rss_gb" else self.ratios.get(name)
            if value is None:
                continue
            met = value <= target if name in UPPER_BOUNDS else value >= target
            noisy = any(t in self.noisy for t in TARGET_TIMINGS.get(name, ()))
            out[name] = (value, target, "met" if met else "noisy machine" if noisy else "not met")
        w = self.figures.get("weightings")
        for name, row in (w or {}).get("methods", {}).items():
            if name != "fixed":
                value, target = row["ratio_vs_fixed"], WEIGHTING_TARGETS[row["kind"]]
                status = "met" if value <= target else "noisy machine" if w["noisy"] else "not met"
                out[f"weighting_{name}_vs_fixed"] = (value, target, status)
        return out


@dataclass
class ModelBench:
    """A model on random inputs of the configured size: ``forward(direct_only)`` in inference mode and
    ``train_step(method=None)`` (forward, losses in fp32, the weighting's backward, Adam step), at the configured
    precision; ``method`` replaces the configured weighting for one step (the model and optimizer are shared)."""

    model: torch.nn.Module
    forward: Callable[[bool], object]
    train_step: Callable[..., None]
    precision: str


def random_targets(tasks, batch: int, height: int, width: int, num_classes: int, device, generator=None) -> dict:
    """Random targets of every task in its layout: class ids, depth in (0, 1), unit normals (B×3×H×W)."""
    out = {}
    if "seg" in tasks:
        out["seg"] = torch.randint(0, num_classes, (batch, height, width), generator=generator).to(device)
    if "depth" in tasks:
        out["depth"] = torch.rand(batch, 1, height, width, generator=generator).to(device)
    if "normal" in tasks:
        n = torch.randn(batch, 3, height, width, generator=generator)
        out["normal"] = torch.nn.functional.normalize(n, dim=1).to(device)
    return out


def build_model_bench(cfg: BenchConfig, device: torch.device) -> ModelBench:
    import crosstask_cli as ct
    from crosstask_cli.engine.device import autocast, memory_format, resolve_amp
    from crosstask_cli.tasks import task_loss_name

    torch.manual_seed(0)
    from crosstask_cli.architectures import get_arch

    size = (cfg.height, cfg.width) if get_arch(cfg.arch).needs_input_size else None
    model = ct.build_model(cfg.enc_layers, cfg.num_classes, tasks=cfg.tasks, transfer=cfg.transfer, arch=cfg.arch,
                           input_size=size).to(device)  # fmt: skip
    if cfg.channels_last is None:
        fmt = memory_format(device)  # what training and prediction use
    else:
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = ct.CrossTaskLoss(cfg.num_classes, tasks=cfg.tasks, pairs=model.config.pairs or None,
                               consistency="xtsc" if cfg.transfer else "none")  # fmt: skip
    task_names = tuple(task_loss_name(t) for t in cfg.tasks)
    weighting = ct.build_weighting(cfg.weighting, task_names).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, h, w = cfg.batch_size, cfg.height, cfg.width
    x = torch.randn(b, 3, h, w, device=device).contiguous(memory_format=fmt)
    targets = random_targets(cfg.tasks, b, h, w, cfg.num_classes, device)
    precision = resolve_amp(cfg.amp, device)

    def forward(direct_only: bool):
        with torch.inference_mode(), autocast(device, precision):
            return model(x, direct_only=direct_only)

    def train_step(method=None):
        method = weighting if method is None else method
        handle = method.attach(model)
        try:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                pred = model(x)
            if precision != "off":  # losses in fp32, as training computes them
                pred = pred.map(lambda t: t.float())
            losses = loss_fn(pred, targets)
            task_losses = {k: losses[k] for k in method.tasks}
            method.backward(method.combine(task_losses, model), task_losses, model)
            opt.step()
            method.after_step()
        finally:
            if handle is not None:
                handle.remove()

    return ModelBench(model, forward, train_step, precision)


@dataclass
class Interleaved:
    """Step times of several settings measured in rounds ({name: seconds} each): ``every`` round, the ``kept``
    ones (others' load within the limit during all of its steps), others' peak load (cores) per round."""

    kept: list[dict[str, float]]
    every: list[dict[str, float]]
    loads: list[float]
    noisy: bool

    def used(self, runs: int) -> list[dict[str, float]]:
        """The rounds to report: the kept ones, or every round when fewer than min(3, runs) were kept (the
        figure is then marked noisy)."""
        return self.kept if len(self.kept) >= min(3, runs) else self.every


def interleave(steps: dict[str, Callable[[], object]], cfg: BenchConfig, res: BenchResult, device: torch.device,
               label: str) -> Interleaved:  # fmt: skip
    """Warm every step up, then time rounds that run each once (order rotated each round, so none always runs
    first) until ``cfg.runs`` rounds are kept or 3 × runs were tried; ``label`` goes to ``res.noisy`` when too
    few were kept."""
    for step in steps.values():
        for _ in range(max(cfg.warmup, 1)):
            step()
    _sync(device)
    names = list(steps)
    kept, every, loads = [], [], []
    while len(kept) < cfg.runs and len(every) < 3 * cfg.runs:
        shift = len(every) % len(names)
        times, load = {}, 0.0
        for n in names[shift:] + names[:shift]:
            mark = res.probe.mark() if res.probe else None
            start = time.perf_counter()
            steps[n]()
            _sync(device)
            times[n] = time.perf_counter() - start
            load = max(load, res.probe.others_since(mark) if res.probe else 0.0)
        every.append(times)
        loads.append(load)
        if load <= cfg.max_others:
            kept.append(times)
    noisy = len(kept) < cfg.runs
    if noisy:
        res.noisy.append(label)
    return Interleaved(kept, every, loads, noisy)


def bench_weightings(cfg: BenchConfig, res: BenchResult, device: torch.device, names: tuple[str, ...]) -> None:
    """Each method's training step against ``fixed`` on one shared model: rounds that run every method once
    (order rotated each round), a round dropped when others' load exceeded the limit during any of its steps;
    the ratio is the median over kept rounds of the per-round ratio to fixed. Peak memory of a step: CUDA's
    allocator peak, or on the CPU the peak RSS of a fresh process that runs the method's steps alone."""
    import crosstask_cli as ct
    from crosstask_cli.tasks import task_loss_name

    names = ("fixed", *[n for n in names if n != "fixed"])
    mb = build_model_bench(dataclasses.replace(cfg, weighting="fixed"), device)
    task_names = tuple(task_loss_name(t) for t in cfg.tasks)
    methods = {n: ct.build_weighting(n, task_names).to(device) for n in names}
    mb.model.train()
    timed = interleave({n: functools.partial(mb.train_step, methods[n]) for n in names}, cfg, res, device, "weightings")
    use = timed.used(cfg.runs)
    memory = {n: _peak_step_memory(cfg, device, n) for n in names}
    table = {}
    for n in names:
        ratio = statistics.median(t[n] / t["fixed"] for t in use)
        table[n] = {
            "kind": methods[n].kind,
            "median_s": statistics.median(t[n] for t in use),
            "ratio_vs_fixed": ratio,
            "peak_memory_gb": memory[n],
            "memory_vs_fixed": memory[n] / memory["fixed"] if memory["fixed"] else None,
        }
        if n != "fixed":
            res.ratios[f"weighting_{n}_vs_fixed"] = ratio
    res.figures["weightings"] = {
        "methods": table,
        "rounds_kept": len(timed.kept),
        "attempts": len(timed.every),
        "noisy": timed.noisy,
        "precision": mb.precision,
        "memory": "cuda allocator peak" if device.type == "cuda" else "peak RSS of a process running the method",
    }


def _peak_step_memory(cfg: BenchConfig, device: torch.device, name: str) -> float:
    """GB at the peak of a training step with weighting ``name`` (see :func:`bench_weightings`)."""
    if device.type == "cuda":
        mb = build_model_bench(dataclasses.replace(cfg, weighting=name), device)
        mb.model.train()
        mb.train_step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        mb.train_step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 1024**3
        del mb
        torch.cuda.empty_cache()
        return peak
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_peak_rss_child, (dataclasses.asdict(dataclasses.replace(cfg, weighting=name)),))


def _peak_rss_child(cfg: dict) -> float:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mb = build_model_bench(BenchConfig(**cfg), torch.device("cpu"))
    mb.model.train()
    for _ in range(2):
        mb.train_step()
    return peak_rss_gb()


def bench_model(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    mb = build_model_bench(cfg, device)
    model, forward, train_step, b = mb.model, mb.forward, mb.train_step, cfg.batch_size
    res.config["precision"] = mb.precision
    model.eval()
    flops_full = count_flops(lambda: forward(False)) / b
    flops_direct = count_flops(lambda: forward(True)) / b
    model.train()
    flops_train = count_flops(train_step) / b
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    t_full = res.time("forward_full", lambda: forward(False), cfg.runs, cfg.warmup, device)
    t_direct = res.time("forward_direct", lambda: forward(True), cfg.runs, cfg.warmup, device)
    model.train()
    t_train = res.time("train_step", train_step, cfg.runs, cfg.warmup, device)
    gflops, t_mm = matmul_gflops(device, cfg.matmul_n, res=res)
    train_gflops = flops_train * b / t_train.median / 1e9
    res.figures.update(
        forward_full=t_full.to_dict(),
        forward_direct=t_direct.to_dict(),
        train_step=t_train.to_dict(),
        matmul=t_mm.to_dict(),
        flops_per_image={"forward_full": flops_full, "forward_direct": flops_direct, "train_step": flops_train},
        images_per_s={
            "forward_full": b / t_full.median,
            "predict_direct": b / t_direct.median,
            "train": b / t_train.median,
        },
        gflops={
            "matmul_fp32": gflops,
            "train_step": train_gflops,
            "forward_full": flops_full * b / t_full.median / 1e9,
        },
        peak_rss_gb=peak_rss_gb(),
    )
    if device.type == "cuda":
        res.figures["peak_cuda_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    res.ratios["train_vs_matmul"] = train_gflops / gflops
    res.ratios["direct_vs_full_forward"] = t_full.median / t_direct.median


def reference_metric_loop(
    logits: torch.Tensor, target: torch.Tensor, depth_p: torch.Tensor, depth_t: torch.Tensor
) -> dict:
    """The baseline: the original method's evaluation code, rewritten. Labels from ``torch.max``; then per image
    and per class, float masks compared against a constant tensor, union and intersection summed into Python
    scalars; per-image pixel accuracy; depth errors from masked selections. Runs on the inputs' device."""
    _, labels = torch.max(logits, dim=1)
    c, dev = logits.shape[1], logits.device
    miou_sum = acc_sum = 0.0
    for i in range(labels.shape[0]):
        valid = (target[i] != 255).float()
        ious = []
        for k in range(c):
            pred_mask = torch.eq(labels[i], k * torch.ones(labels[i].shape, dtype=torch.long, device=dev))
            true_mask = torch.eq(target[i], k * torch.ones(target[i].shape, dtype=torch.long, device=dev))
            comb = pred_mask.float() + true_mask.float()
            union = torch.sum((comb > 0).float() * valid)
            if union == 0:
                continue
            ious.append(float(torch.sum((comb > 1).float()) / union))
        miou_sum += sum(ious) / max(len(ious), 1)
        acc_sum += float(torch.sum(torch.eq(labels[i], target[i]).float() * valid) / torch.sum(valid))
    mask = depth_t != 0
    p, t = depth_p.masked_select(mask), depth_t.masked_select(mask)
    err = torch.abs(p - t)
    n = float(torch.nonzero(mask, as_tuple=False).size(0))
    return {"miou": miou_sum / labels.shape[0], "pixel_acc": acc_sum / labels.shape[0],
            "abs_err": float(err.sum()) / n, "rel_err": float((err / t).sum()) / n}  # fmt: skip


def bench_metrics(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    """The evaluator's per-batch metric update (``MetricSet.update`` from logits, as ``evaluate`` calls it) for
    each protocol, against the per-image loop. The ``original`` protocol computes the loop's own quantities, so
    its numbers are checked against the loop's before any timing is reported."""
    from crosstask_cli.engine.evaluator import MetricSet

    g = torch.Generator().manual_seed(0)
    b, h, w, c = cfg.batch_size, cfg.height, cfg.width, cfg.num_classes
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < 0.1] = 255
    logits = torch.randn(b, c, h, w, generator=g)  # NCHW, as the model's segmentation head returns it
    dp, dt = torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)
    dt[dt < 0.1] = 0
    logits, target, dp, dt = (x.to(device) for x in (logits, target, dp, dt))
    check = MetricSet(c, ("original",))
    check.update(logits, target, dp, dt)
    ours, ref = check.result("original", "bench"), reference_metric_loop(logits, target, dp, dt)
    for task, key in (
        ("segmentation", "miou"),
        ("segmentation", "pixel_acc"),
        ("depth", "abs_err"),
        ("depth", "rel_err"),
    ):
        if abs(getattr(ours, task)[key] - ref[key]) > 1e-5 * max(1.0, abs(ref[key])):
            raise RuntimeError(
                f"metric benchmark: {key} {getattr(ours, task)[key]} differs from the reference loop's {ref[key]}"
            )

    runs = max(cfg.runs, 30)  # a few milliseconds each: many runs are cheap and steady the median
    timings = {}
    for protocol in ("standard", "original"):
        metrics = MetricSet(c, (protocol,))
        timings[protocol] = res.time(f"metrics_{protocol}", lambda m=metrics: m.update(logits, target, dp, dt),
                                     runs, 3, device)  # fmt: skip
    t_loop = res.time("metrics_loop", lambda: reference_metric_loop(logits, target, dp, dt), runs, 3, device)
    res.figures["metrics_update"] = {
        "standard": timings["standard"].to_dict(),
        "original": timings["original"].to_dict(),
        "per_image_loop": t_loop.to_dict(),
        "images_per_s": b / timings["standard"].median,
    }
    res.ratios["metrics_vs_loop"] = t_loop.median / timings["standard"].median
    res.ratios["metrics_original_vs_loop"] = t_loop.median / timings["original"].median


def bench_energy(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    """What the consistency-energy report adds to evaluating a batch: ``ConsistencyReport.update`` against what
    ``evaluate`` does per batch without it, with the TaskTransferNets already running (full forward, metric
    update, direct-vs-transferred consistency)."""
    from crosstask_cli.energy import ConsistencyReport
    from crosstask_cli.engine.evaluator import MetricSet

    mb = build_model_bench(cfg, device)
    g = torch.Generator().manual_seed(1)
    b, h, w, c = cfg.batch_size, cfg.height, cfg.width, cfg.num_classes
    targets = random_targets(cfg.tasks, b, h, w, c, device, g)
    metrics = MetricSet(c, ("standard",), tasks=cfg.tasks, pairs=mb.model.config.pairs)
    mb.model.eval()

    def eval_batch():
        pred = mb.forward(False).map(lambda t: t.float())
        metrics.update(pred.direct, targets)
        metrics.consistency.update_pairs(pred.direct, pred.transferred, targets)
        return pred

    pred = eval_batch()
    report = ConsistencyReport(c, pairs=mb.model.config.pairs)
    t_eval = res.time("eval_batch", eval_batch, cfg.runs, cfg.warmup, device)
    t_energy = res.time("energy_update", lambda: report.update(pred, targets), max(cfg.runs, 20), 3, device)
    res.figures["energy"] = {"eval_batch": t_eval.to_dict(), "energy_update": t_energy.to_dict()}
    res.ratios["energy_share_of_eval"] = t_energy.median / t_eval.median


TASK_SETS = {  # bench --part tasks: what the third task and its TaskTransferNets cost, against the 2-task model
    "seg+depth (2 nets)": (("seg", "depth"), True),
    "seg+depth+normal, no nets": (("seg", "depth", "normal"), False),
    "seg+depth+normal (6 nets)": (("seg", "depth", "normal"), True),
}


def _timed_steps(
    benches: dict[str, ModelBench],
    cfg: BenchConfig,
    res: BenchResult,
    device: torch.device,
    label: str,
    base: str,
    ratio_key: str,
) -> tuple[dict[str, dict], Interleaved]:
    """Each model's training step: FLOPs per image, then the steps interleaved round by round; per model its median
    time, the median per-round ratio to ``base`` (under ``ratio_key``), parameters and FLOPs."""
    from crosstask_cli.models.network import count_trainable_parameters

    flops = {}
    for n, mb in benches.items():
        mb.model.train()
        flops[n] = count_flops(mb.train_step) / cfg.batch_size
    timed = interleave({n: mb.train_step for n, mb in benches.items()}, cfg, res, device, label)
    use = timed.used(cfg.runs)
    table = {n: {"median_s": statistics.median(t[n] for t in use),
                 ratio_key: statistics.median(t[n] / t[base] for t in use),
                 "parameters": count_trainable_parameters(benches[n].model),
                 "train_flops_per_image": flops[n]} for n in benches}  # fmt: skip
    return table, timed


def bench_tasks(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    """The training step of the 2-task model (seg, depth, its two TaskTransferNets) against the 3-task model
    without TaskTransferNets (the third decoder alone) and with all six, interleaved round by round in one process
    (a round is dropped when others' load exceeded the limit during any of its steps); ratios are medians of the
    per-round ratios to the 2-task step. Also each model's parameters and FLOPs per image of a training step."""
    names = list(TASK_SETS)
    benches = {n: build_model_bench(dataclasses.replace(cfg, tasks=t, transfer=tr), device)
               for n, (t, tr) in TASK_SETS.items()}  # fmt: skip
    base = names[0]
    table, timed = _timed_steps(benches, cfg, res, device, "tasks", base, "ratio_vs_two_tasks")
    res.figures["tasks"] = {"settings": table, "rounds_kept": len(timed.kept), "attempts": len(timed.every),
                            "noisy": timed.noisy, "precision": benches[base].precision}  # fmt: skip
    res.ratios["third_task_vs_two_tasks"] = table[names[1]]["ratio_vs_two_tasks"]
    res.ratios["three_tasks_six_nets_vs_two_tasks"] = table[names[2]]["ratio_vs_two_tasks"]


def bench_archs(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    """The training step of every architecture against ResNet-``enc_layers`` (same tasks, TaskTransferNets, batch
    and size; each in the memory format training uses, one backward pass per step), interleaved round by round in
    one process; ratios are medians of the per-round ratios. Also parameters, FLOPs per image of a training step
    and the peak memory of a step (CUDA's allocator peak, or the peak RSS of a fresh process running it alone)."""
    from crosstask_cli.architectures import ARCHITECTURES, get_arch

    names = [a for a in ARCHITECTURES if not get_arch(a).needs_input_size or not (cfg.height % 16 or cfg.width % 16)]
    benches = {a: build_model_bench(dataclasses.replace(cfg, arch=a), device) for a in names}
    table, timed = _timed_steps(benches, cfg, res, device, "archs", "resnet", "ratio_vs_resnet")
    for a in names:
        table[a]["peak_memory_gb"] = _peak_step_memory(dataclasses.replace(cfg, arch=a), device, cfg.weighting)
        p = next(benches[a].model.parameters())
        table[a]["channels_last"] = p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
        if a != "resnet":
            res.ratios[f"arch_{a}_vs_resnet"] = table[a]["ratio_vs_resnet"]
    res.figures["archs"] = {"settings": table, "rounds_kept": len(timed.kept), "attempts": len(timed.every),
                            "noisy": timed.noisy, "precision": benches["resnet"].precision,
                            "memory": "cuda allocator peak" if device.type == "cuda" else "peak RSS of a process "
                            "running the step"}  # fmt: skip


def bench_loader(cfg: BenchConfig, res: BenchResult, workdir: Path) -> None:
    from crosstask_cli.data.dataset import PreparedDataset

    if cfg.data is None:
        from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes, prepare_synthetic

        raw = prepare_synthetic(workdir / "loader-raw", train=32, val=2, height=cfg.height, width=cfg.width, seed=0)
        data = prepare_cityscapes(
            raw, workdir / "loader-prepared", PrepareOptions(cfg.height, cfg.width, 7), dataset="synthetic"
        )
    else:
        data = Path(cfg.data)
    ds = PreparedDataset(data, "train", augment=True, seed=0)
    n = len(ds)
    state = {"epoch": 0}

    def one_pass():
        state["epoch"] += 1
        for i in range(n):
            ds[(state["epoch"], i)]

    t = res.time("loader", one_pass, 3, 1, torch.device("cpu"))
    prepared_sps = n / t.median
    res.figures["loader"] = {"prepared_augmented_samples_per_s": prepared_sps, "prepared": t.to_dict()}
    if "train_step" in res.figures:
        res.ratios["loader_vs_train_step"] = prepared_sps / res.figures["images_per_s"]["train"]
    if cfg.raw_samples > 0:
        from crosstask_cli.data.cityscapes import convert_raw_targets, find_raw_samples
        from crosstask_cli.data.prepare import prepare_synthetic

        # Full-size (2048×1024) Cityscapes-layout files: what the original method decodes for every sample.
        raw = prepare_synthetic(
            workdir / "full-size-raw", train=cfg.raw_samples, val=1, height=1024, width=2048, seed=1
        )
        samples = find_raw_samples(raw, "train")
        t_raw = res.time("raw_png", lambda: [convert_raw_targets(s, cfg.height, cfg.width, 7, "inverse")
                                             for s in samples], 3, 1, torch.device("cpu"))  # fmt: skip
        raw_sps = len(samples) / t_raw.median
        res.figures["loader"]["raw_png_samples_per_s"] = raw_sps
        res.figures["loader"]["raw_png"] = t_raw.to_dict()
        res.ratios["loader_vs_raw_png"] = prepared_sps / raw_sps


def bench_compare(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    """Time the training step under two values of one setting (``cfg.compare`` = (setting, A, B)), interleaved
    A, B, B, A, … in one process so that both see the same machine; a pair is dropped when others' load
    exceeded the limit during either step. Reports both medians and the median of the per-pair ratios B / A."""
    setting, a_value, b_value = cfg.compare
    benches = {k: build_model_bench(dataclasses.replace(cfg, **{setting: v}), device)
               for k, v in (("a", a_value), ("b", b_value))}  # fmt: skip
    for mb in benches.values():
        mb.model.train()
    timed = interleave({k: mb.train_step for k, mb in benches.items()}, cfg, res, device, "compare")
    use = timed.used(cfg.runs)
    ratio = statistics.median(t["b"] / t["a"] for t in use)
    res.figures["compare"] = {
        "setting": setting,
        "a": a_value,
        "b": b_value,
        "precision": [mb.precision for mb in benches.values()],
        "a_median_s": statistics.median(t["a"] for t in use),
        "b_median_s": statistics.median(t["b"] for t in use),
        "ratio_b_over_a": ratio,
        "pairs_kept": len(timed.kept),
        "attempts": len(timed.every),
        "others_cores": timed.loads,
        "noisy": timed.noisy,
    }
    res.ratios["compare_b_over_a"] = ratio


def describe_machine(device: torch.device) -> dict:
    """Where and when figures were measured: the CPU model (``/proc/cpuinfo`` on Linux, else the platform's
    name), its logical cores, the GPU's name on CUDA, and the UTC date and time."""
    import datetime
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "logical_cores": os.cpu_count(),
           "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def run_bench(
    cfg: BenchConfig, parts: tuple[str, ...] = ("model", "metrics", "energy", "loader"), progress=None
) -> BenchResult:
    """Run the selected benchmark parts; returns figures and the ratios the targets are stated in."""
    import tempfile

    from crosstask_cli.engine.device import resolve_device

    device = resolve_device(cfg.device)
    res = BenchResult(config={**cfg.__dict__}, device=str(device), probe=LoadProbe())
    res.config["torch"] = torch.__version__
    res.config["threads"] = torch.get_num_threads()
    machine = {**describe_machine(device), "load_probe": res.probe.available, "max_others_cores": cfg.max_others}
    if res.probe.available and cfg.quiet_wait_s > 0:
        if progress:
            progress("waiting for a quiet machine")
        waited, quiet = res.probe.wait_for_quiet(cfg.max_others, cfg.quiet_wait_s)
        machine.update(waited_s=waited, quiet_at_start=quiet)
    res.figures["machine"] = machine
    if cfg.compare is not None:
        if progress:
            progress(f"{cfg.compare[0]}: {cfg.compare[1]} against {cfg.compare[2]}")
        bench_compare(cfg, res, device)
        return res
    if cfg.weightings:
        if progress:
            progress(f"the training step with {', '.join(cfg.weightings)} against fixed")
        bench_weightings(cfg, res, device, cfg.weightings)
        return res
    steps = {
        "model": lambda: bench_model(cfg, res, device),
        "metrics": lambda: bench_metrics(cfg, res, device),
        "energy": lambda: bench_energy(cfg, res, device),
        "tasks": lambda: bench_tasks(cfg, res, device),
        "archs": lambda: bench_archs(cfg, res, device),
    }
    with tempfile.TemporaryDirectory(prefix="crosstask-bench-") as tmp:
        steps["loader"] = lambda: bench_loader(cfg, res, Path(tmp))
        for part in parts:
            if progress:
                progress(part)
            steps[part]()
    f = res.figures
    if "forward_full" in f and "metrics_update" in f:
        # what the metric update adds to evaluating a batch of the same size (full forward, as evaluate runs it)
        update = f["metrics_update"]["standard"]["median_s"]
        res.ratios["metrics_share_of_eval"] = update / (update + f["forward_full"]["median_s"])
    return res
