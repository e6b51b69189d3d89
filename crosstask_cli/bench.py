"""``crosstask bench``: speed and memory of the model, the data path and the metrics, measured in one run.

Every figure that is compared is measured in the same process, so ratios stay meaningful on a shared, noisy
machine: the training step against an fp32 matmul (the machine's practical peak), direct-only prediction against
the full forward, the prepared loader against decoding raw PNGs, vectorised metrics against a per-image,
per-class loop (kept here as the baseline).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Targets of the speed issue (ResNet-34, 7 classes, 128×256, batch 8, fp32, CPU).
TARGETS = {
    "train_vs_matmul": 0.85,
    "direct_vs_full_forward": 2.5,
    "loader_vs_raw_png": 100.0,
    "loader_vs_train_step": 10.0,
    "metrics_vs_loop": 20.0,
    "peak_rss_gb": 6.0,
}


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = ±5 % noise)."""
        if len(self.seconds) < 4:
            return (max(self.seconds) - min(self.seconds)) / self.median
        q = statistics.quantiles(self.seconds, n=4)
        return (q[2] - q[0]) / self.median

    def to_dict(self) -> dict:
        return {"median_s": self.median, "spread": self.spread, "runs": len(self.seconds), "all_s": self.seconds}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], runs: int, warmup: int, device: torch.device) -> Timing:
    """``runs`` timings of one call each, after ``warmup`` untimed calls, synchronising CUDA around each.

    Not ``torch.utils.benchmark.Timer``: its ``timeit`` runs at least two untimed calls before every measurement
    (3× the cost of a multi-second CPU training step per timed run), and ``blocked_autorange`` times blocks, not the
    single calls whose spread is reported here."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return Timing(out)


def matmul_gflops(device: torch.device, n: int = 4096, runs: int = 5) -> tuple[float, Timing]:
    """fp32 n×n matmul throughput (GFLOP/s), the reference for how fast this machine multiplies."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = time_it(lambda: a @ b, runs, 1, device)
    return 2 * n**3 / t.median / 1e9, t


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


@dataclass
class BenchConfig:
    enc_layers: int = 34
    num_classes: int = 7
    height: int = 128
    width: int = 256
    batch_size: int = 8
    device: str = "auto"
    amp: bool = False
    runs: int = 5
    warmup: int = 2
    matmul_n: int = 4096
    data: str | None = None  # a prepared dataset for the loader benchmark (else a temporary synthetic one)
    raw_samples: int = 4  # full-size (2048×1024) raw PNG samples decoded for the loader baseline; 0 = skip
    weighting: str = "fixed"  # task weighting used in the training step (pcgrad costs one backward per task)
    channels_last: bool | None = None  # default: as training uses it (engine.device.memory_format)


@dataclass
class BenchResult:
    config: dict
    device: str
    figures: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)

    def targets(self) -> dict[str, tuple[float, float, bool]]:
        """name → (measured, target, met)."""
        out = {}
        for name, target in TARGETS.items():
            if name == "peak_rss_gb":
                value = self.figures.get("peak_rss_gb")
                if value is not None:
                    out[name] = (value, target, value <= target)
            elif name in self.ratios:
                out[name] = (self.ratios[name], target, self.ratios[name] >= target)
        return out


def bench_model(cfg: BenchConfig, res: BenchResult, device: torch.device) -> None:
    import crosstask_cli as ct
    from crosstask_cli.engine.device import amp_dtype, memory_format

    torch.manual_seed(0)
    model = ct.build_model(cfg.enc_layers, cfg.num_classes).to(device)
    if cfg.channels_last is None:
        fmt = memory_format(device)  # what training and prediction use
    else:
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = ct.CrossTaskLoss(cfg.num_classes)
    weighting = ct.build_weighting(cfg.weighting).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, h, w = cfg.batch_size, cfg.height, cfg.width
    x = torch.randn(b, 3, h, w, device=device).contiguous(memory_format=fmt)
    seg_t = torch.randint(0, cfg.num_classes, (b, h, w), device=device)
    depth_t = torch.rand(b, 1, h, w, device=device)
    dtype = amp_dtype(device)

    def forward(direct_only: bool):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=cfg.amp):
            return model(x, direct_only=direct_only)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=cfg.amp):
            pred = model(x)
        losses = loss_fn(pred, seg_t, depth_t)
        task_losses = {k: losses[k] for k in weighting.tasks}
        weighting.backward(weighting.combine(task_losses, model), task_losses, model)
        opt.step()
        weighting.after_step()

    model.eval()
    flops_full = count_flops(lambda: forward(False)) / b
    flops_direct = count_flops(lambda: forward(True)) / b
    model.train()
    flops_train = count_flops(train_step) / b
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    t_full = time_it(lambda: forward(False), cfg.runs, cfg.warmup, device)
    t_direct = time_it(lambda: forward(True), cfg.runs, cfg.warmup, device)
    model.train()
    t_train = time_it(train_step, cfg.runs, cfg.warmup, device)
    gflops, t_mm = matmul_gflops(device, cfg.matmul_n)
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
        timings[protocol] = time_it(lambda m=metrics: m.update(logits, target, dp, dt), runs, 3, device)
    t_loop = time_it(lambda: reference_metric_loop(logits, target, dp, dt), runs, 3, device)
    res.figures["metrics_update"] = {
        "standard": timings["standard"].to_dict(),
        "original": timings["original"].to_dict(),
        "per_image_loop": t_loop.to_dict(),
        "images_per_s": b / timings["standard"].median,
    }
    res.ratios["metrics_vs_loop"] = t_loop.median / timings["standard"].median
    res.ratios["metrics_original_vs_loop"] = t_loop.median / timings["original"].median


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

    t = time_it(one_pass, 3, 1, torch.device("cpu"))
    prepared_sps = n / t.median
    res.figures["loader"] = {"prepared_augmented_samples_per_s": prepared_sps, "prepared": t.to_dict()}
    if "train_step" in res.figures:
        res.ratios["loader_vs_train_step"] = prepared_sps / res.figures["images_per_s"]["train"]
    if cfg.raw_samples > 0:
        from crosstask_cli.data.cityscapes import convert_raw_sample, find_raw_samples
        from crosstask_cli.data.prepare import prepare_synthetic

        # Full-size (2048×1024) Cityscapes-layout files: what the original method decodes for every sample.
        raw = prepare_synthetic(
            workdir / "full-size-raw", train=cfg.raw_samples, val=1, height=1024, width=2048, seed=1
        )
        samples = find_raw_samples(raw, "train")
        t_raw = time_it(lambda: [convert_raw_sample(s, cfg.height, cfg.width, 7, "inverse") for s in samples], 3, 1,
                        torch.device("cpu"))  # fmt: skip
        raw_sps = len(samples) / t_raw.median
        res.figures["loader"]["raw_png_samples_per_s"] = raw_sps
        res.figures["loader"]["raw_png"] = t_raw.to_dict()
        res.ratios["loader_vs_raw_png"] = prepared_sps / raw_sps


def run_bench(cfg: BenchConfig, parts: tuple[str, ...] = ("model", "metrics", "loader"), progress=None) -> BenchResult:
    """Run the selected benchmark parts; returns figures and the ratios the targets are stated in."""
    import tempfile

    from crosstask_cli.engine.device import resolve_device

    device = resolve_device(cfg.device)
    res = BenchResult(config={**cfg.__dict__}, device=str(device))
    res.config["torch"] = torch.__version__
    res.config["threads"] = torch.get_num_threads()
    steps = {"model": lambda: bench_model(cfg, res, device), "metrics": lambda: bench_metrics(cfg, res, device)}
    with tempfile.TemporaryDirectory(prefix="crosstask-bench-") as tmp:
        steps["loader"] = lambda: bench_loader(cfg, res, Path(tmp))
        for part in parts:
            if progress:
                progress(part)
            steps[part]()
    return res
