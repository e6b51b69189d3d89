"""``crosstask bench``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import CLIError, err, esc, handle_errors, out

HELP = """Measure speed and memory in one run: forward / training-step time (median and spread of N runs after
warm-up), images/s, FLOPs per image (torch.utils.flop_counter), achieved GFLOP/s against an fp32 matmul timed in
the same run, peak memory, direct-only prediction, the prepared data loader against decoding full-size raw PNGs,
and the evaluator's metric update from logits (standard and original protocol, at least 30 runs) against the
original method's per-image, per-class loop, after checking that both give the same numbers. Prints how each
figure compares with the project's targets."""

PARTS = ("model", "metrics", "loader")


@handle_errors
def bench_command(
    enc_layers: int = typer.Option(34, "--enc-layers", help="ResNet depth (18, 34, 50, 101, 152)."),
    num_classes: int = typer.Option(7, "--num-classes", help="Segmentation classes."),
    height: int = typer.Option(128, "--height", help="Input height."),
    width: int = typer.Option(256, "--width", help="Input width."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Batch size."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda[:N] or mps."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Mixed precision (bf16 where supported, else fp16)."),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs per figure (after warm-up)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed warm-up runs."),
    matmul_n: int = typer.Option(4096, "--matmul-size", min=256, help="Size n of the n×n fp32 matmul reference."),
    data: Path = typer.Option(
        None, "--data", help="Prepared dataset for the loader figure (default: a small synthetic one)."
    ),
    raw_samples: int = typer.Option(
        4,
        "--raw-samples",
        min=0,
        help="Full-size 2048×1024 raw samples to decode for the loader baseline (0 skips it).",
    ),
    parts: list[str] = typer.Option(
        list(PARTS), "--part", help="What to measure: model, metrics, loader (repeatable)."
    ),
    weighting: str = typer.Option(
        "fixed", "--weighting", help="Task weighting in the training step (e.g. pcgrad, to measure its cost)."
    ),
    json_file: Path = typer.Option(None, "--json", help="Also write every figure as JSON."),
) -> None:
    from crosstask_cli.bench import BenchConfig, run_bench
    from crosstask_cli.outputs import check_output_file

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise CLIError(f"--part must be one of {', '.join(PARTS)}, got {', '.join(sorted(unknown))}")
    for flag, value in (("--height", height), ("--width", width)):
        if value < 8 or value % 8:
            raise CLIError(
                f"{flag} must be a positive multiple of 8 (the TaskTransferNet pools three times), got {value}"
            )
    check_output_file(json_file, "--json", {"--data": data})
    cfg = BenchConfig(enc_layers, num_classes, height, width, batch_size, device, amp, runs, warmup, matmul_n,
                      str(data) if data else None, raw_samples, weighting)  # fmt: skip
    res = run_bench(cfg, tuple(p for p in PARTS if p in parts), progress=lambda p: err.print(f"measuring {p}…"))
    f = res.figures
    t = Table(title=f"crosstask bench · ResNet-{enc_layers}, {num_classes} classes, {height}×{width}, batch {batch_size}, "
                    f"{res.device}{' AMP' if amp else ' fp32'}", title_justify="left")  # fmt: skip
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("spread", justify="right")
    if "train_step" in f:
        for name, key in (
            ("training step", "train_step"),
            ("forward (full)", "forward_full"),
            ("forward (direct only)", "forward_direct"),
        ):
            t.add_row(f"{name} median", f"{f[key]['median_s'] * 1000:.0f} ms", f"±{f[key]['spread'] * 50:.1f} %")
        ips = f["images_per_s"]
        t.add_row("training images/s", f"{ips['train']:.2f}", "")
        t.add_row(
            "predict images/s (direct) / full forward", f"{ips['predict_direct']:.2f} / {ips['forward_full']:.2f}", ""
        )
        fl = f["flops_per_image"]
        t.add_row("GFLOPs per image: forward full / direct / train step",
                  f"{fl['forward_full'] / 1e9:.1f} / {fl['forward_direct'] / 1e9:.1f} / {fl['train_step'] / 1e9:.1f}", "")  # fmt: skip
        g = f["gflops"]
        t.add_row("achieved GFLOP/s: train step / fp32 matmul", f"{g['train_step']:.0f} / {g['matmul_fp32']:.0f}", "")
        t.add_row("peak RSS (process)", f"{f['peak_rss_gb']:.2f} GB", "")
        if "peak_cuda_memory_gb" in f:
            t.add_row("peak CUDA memory", f"{f['peak_cuda_memory_gb']:.2f} GB", "")
    if "loader" in f:
        t.add_row(
            "loader samples/s (prepared + augmentation)", f"{f['loader']['prepared_augmented_samples_per_s']:.0f}", ""
        )
        if "raw_png_samples_per_s" in f["loader"]:
            t.add_row("loader samples/s (raw 2048×1024 PNGs)", f"{f['loader']['raw_png_samples_per_s']:.2f}", "")
    if "metrics_update" in f:
        m = f["metrics_update"]
        t.add_row("metric update per batch: standard / original protocol / per-image loop",
                  f"{m['standard']['median_s'] * 1000:.2f} / {m['original']['median_s'] * 1000:.2f} / "
                  f"{m['per_image_loop']['median_s'] * 1000:.2f} ms", "")  # fmt: skip
    out.print(t)
    tt = Table(title="targets", title_justify="left")
    for col in ("ratio", "measured", "target", ""):
        tt.add_column(col, justify="right" if col in ("measured", "target") else "left")
    for name, (value, target, met) in res.targets().items():
        op = "≤" if name == "peak_rss_gb" else "≥"
        tt.add_row(name, f"{value:.2f}", f"{op} {target:g}", "[green]met[/]" if met else "[red]not met[/]")
    out.print(tt)
    if json_file is not None:
        from crosstask_cli.atomic import atomic_write_text

        payload = {"config": res.config, "device": res.device, "figures": res.figures, "ratios": res.ratios,
                   "targets": {k: {"measured": v, "target": t_, "met": m} for k, (v, t_, m) in res.targets().items()}}  # fmt: skip
        atomic_write_text(json_file, json.dumps(payload, indent=2, default=str))
        out.print(f"figures written to [bold]{esc(json_file)}[/]")
