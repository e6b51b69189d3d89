"""``crosstask bench``."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.bench_options import BENCH_FIELDS, DEFAULT_PARTS, PARTS, WEIGHTING_TARGETS, BenchConfig
from crosstask_cli.cli.common import CLIError, err, esc, handle_errors, out
from crosstask_cli.cli.options import parameter, signature, values

HELP = """Measure speed and memory in one run: forward / training-step time (median and spread of N runs after
warm-up), images/s, FLOPs per image (torch.utils.flop_counter), achieved GFLOP/s against an fp32 matmul timed in
the same run, peak memory, direct-only prediction, the prepared data loader against decoding full-size raw PNGs,
and the evaluator's metric update from logits (standard and original protocol, at least 30 runs) against the
original method's per-image, per-class loop, after checking that both give the same numbers. Prints how each
figure compares with the project's targets."""

EXTRA = {  # the command's own options (what to run), beside the measured configuration's
    "parts": (list[str], typer.Option(
        None, "--part",
        help="What to measure: model, metrics, energy (what the consistency-energy report adds to eval), loader, "
        "tasks (the training step of the 2-task model against the 3-task one with no and with six TaskTransferNets), "
        "archs (every architecture's training step against resnet, with FLOPs and peak memory) "
        "(repeatable; default the first four).")),
    "compare": (str, typer.Option(
        None, "--compare",
        help="SETTING=A,B: time the training step with two values of one setting, interleaved in this process, "
        "and print the ratio B/A instead of the other figures. SETTING: weighting (e.g. weighting=fixed,pcgrad), "
        "amp (e.g. amp=off,bf16), batch-size, channels-last (on/off).")),
    "weighting": (str, typer.Option(
        None, "--weighting",
        help="NAME[,NAME…] or all: instead of the other figures, time the training step with each task-weighting "
        "method against fixed, interleaved in this process, and measure each one's peak memory; the targets are "
        f"≤ {WEIGHTING_TARGETS['gradient']:g}× fixed for gradient methods and ≤ {WEIGHTING_TARGETS['loss']:g}× "
        "for loss-based ones.")),
    "json_file": (Path, typer.Option(None, "--json", help="Also write every figure as JSON.")),
}  # fmt: skip


def _bench_command(parts=None, compare=None, weighting=None, json_file=None, **options) -> None:
    from crosstask_cli.bench import run_bench
    from crosstask_cli.outputs import check_output_file

    if compare is not None and parts:
        raise CLIError("--compare times the training step only; --part does not apply to it")
    methods = _parse_weightings(weighting) if weighting is not None else None
    if methods is not None and (parts or compare is not None):
        raise CLIError("--weighting times the training step of each method; --part and --compare do not apply")
    parts = parts or list(DEFAULT_PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise CLIError(f"--part must be one of {', '.join(PARTS)}, got {', '.join(sorted(unknown))}")
    compared = _parse_compare(compare) if compare is not None else None
    cfg = BenchConfig(**values(BENCH_FIELDS, options), compare=compared, weightings=methods)
    check_output_file(json_file, "--json", {"--data": cfg.data})
    res = run_bench(cfg, tuple(p for p in PARTS if p in parts), progress=lambda p: err.print(f"measuring {p}…"))
    machine = res.figures.get("machine", {})
    if machine.get("quiet_at_start") is False:
        err.print(f"[yellow]warning:[/] other processes kept using more than {cfg.max_others:g} cores for "
                  f"{machine['waited_s']:.0f} s; measuring anyway, dropping the disturbed runs")  # fmt: skip
    if compared is not None:
        _render_compare(res, cfg)
    elif methods is not None:
        _render_weightings(res, cfg)
    else:
        _render_parts(res, cfg)
        _render_targets(res, cfg)
    _write_json(res, json_file)


def _signature():
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [parameter(f) for f in BENCH_FIELDS.values()]
    params += [inspect.Parameter(name, kw, annotation=ann, default=opt) for name, (ann, opt) in EXTRA.items()]
    return signature(params)


bench_command = handle_errors(_bench_command)
bench_command.__signature__ = _signature()  # Typer reads the options here


def _render_parts(res, cfg) -> None:
    """The figures of the measured parts, as one table."""
    f = res.figures
    net = f"ResNet-{cfg.enc_layers}" if cfg.arch == "resnet" else cfg.arch
    t = Table(title=f"crosstask bench · {net}, {cfg.num_classes} classes, {cfg.height}×{cfg.width}, "
                    f"batch {cfg.batch_size}, {res.device} {res.config.get('precision', cfg.amp).replace('off', 'fp32')}",
              title_justify="left")  # fmt: skip
    m = f.get("machine", {})
    if "cpu" in m:
        gpu = f", {m['gpu']}" if "gpu" in m else ""
        t.caption, t.caption_justify = f"{m['cpu']}, {m['logical_cores']} cores{gpu}, {m['date_utc']}", "left"
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("spread", justify="right")
    if "train_step" in f:
        _model_rows(t, f)
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
    if "energy" in f:
        e = f["energy"]
        t.add_row("eval batch (full forward, metrics, consistency) / energy report update",
                  f"{e['eval_batch']['median_s'] * 1000:.0f} / {e['energy_update']['median_s'] * 1000:.1f} ms", "")  # fmt: skip
    if "tasks" in f:
        for name, row in f["tasks"]["settings"].items():
            t.add_row(f"training step, {name}",
                      f"{row['median_s'] * 1000:.0f} ms · {row['ratio_vs_two_tasks']:.3f}× · "
                      f"{row['parameters'] / 1e6:.1f} M params · {row['train_flops_per_image'] / 1e9:.1f} GFLOPs", "")  # fmt: skip
    if "archs" in f:
        for name, row in f["archs"]["settings"].items():
            t.add_row(f"training step, {name}",
                      f"{row['median_s'] * 1000:.0f} ms · {row['ratio_vs_resnet']:.3f}× ResNet · "
                      f"{row['parameters'] / 1e6:.1f} M params · {row['train_flops_per_image'] / 1e9:.1f} GFLOPs · "
                      f"{row['peak_memory_gb']:.2f} GB peak", "")  # fmt: skip
    out.print(t)


def _model_rows(t, f) -> None:
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


def _render_targets(res, cfg) -> None:
    from crosstask_cli.bench import is_upper_bound

    tt = Table(title="targets", title_justify="left")
    for col in ("ratio", "measured", "target", ""):
        tt.add_column(col, justify="right" if col in ("measured", "target") else "left")
    for name, (value, target, status) in res.targets().items():
        op = "≤" if is_upper_bound(name) else "≥"
        tt.add_row(name, f"{value:.3g}", f"{op} {target:g}", STYLES[status])
    if tt.row_count:  # parts without targets (tasks, loader) print no empty table
        out.print(tt)
    if res.noisy:
        err.print(
            f"[yellow]noisy machine:[/] other processes used more than {cfg.max_others:g} cores during too many runs "
            f"of {', '.join(res.noisy)}; those figures describe the load, not crosstask (rerun on a quiet machine)"
        )


STYLES = {"met": "[green]met[/]", "not met": "[red]not met[/]", "noisy machine": "[yellow]noisy machine[/]"}


def _write_json(res, json_file: Path | None) -> None:
    if json_file is None:
        return
    from crosstask_cli.atomic import atomic_write_json

    payload = {"config": res.config, "device": res.device, "figures": res.figures, "ratios": res.ratios,
               "noisy": res.noisy, "targets": {k: {"measured": v, "target": t_, "status": s}
                                               for k, (v, t_, s) in res.targets().items()}}  # fmt: skip
    atomic_write_json(json_file, payload)
    out.print(f"figures written to [bold]{esc(json_file)}[/]")


def _parse_compare(text: str) -> tuple[str, object, object]:
    """``SETTING=A,B`` → (BenchConfig field, A, B), values in the field's type."""
    from crosstask_cli.bench_options import COMPARABLE
    from crosstask_cli.engine.device import AMP_MODES
    from crosstask_cli.weighting import weighting_names

    name, sep, values = text.partition("=")
    field = name.strip().replace("-", "_")
    parts = [v.strip() for v in values.split(",")]
    if not sep or field not in COMPARABLE or len(parts) != 2 or not all(parts):
        raise CLIError(
            f"--compare {text!r}: expected SETTING=A,B with SETTING one of "
            f"{', '.join(c.replace('_', '-') for c in COMPARABLE)}"
        )
    if field == "weighting":
        bad = [p for p in parts if p not in weighting_names()]
        choices = weighting_names()
    elif field == "amp":
        bad, choices = [p for p in parts if p not in AMP_MODES], AMP_MODES
    elif field == "batch_size":
        bad, choices = [p for p in parts if not (p.isdigit() and int(p) > 0)], ("positive integers",)
        parts = parts if bad else [int(p) for p in parts]
    else:
        flags = {"on": True, "true": True, "off": False, "false": False}
        bad, choices = [p for p in parts if p.lower() not in flags], ("on", "off")
        parts = parts if bad else [flags[p.lower()] for p in parts]
    if bad:
        raise CLIError(f"--compare {text!r}: {', '.join(map(str, bad))} is not one of {', '.join(map(str, choices))}")
    if parts[0] == parts[1]:
        raise CLIError(f"--compare {text!r}: the two values are the same; nothing to compare")
    return field, parts[0], parts[1]


def _render_compare(res, cfg) -> None:
    c = res.figures["compare"]
    setting = c["setting"].replace("_", "-")
    t = Table(title=f"crosstask bench --compare · training step · ResNet-{cfg.enc_layers}, {cfg.height}×{cfg.width}, "
                    f"batch {cfg.batch_size}, {res.device}", title_justify="left")  # fmt: skip
    t.add_column(setting)
    t.add_column("median step", justify="right")
    t.add_column("precision")
    t.add_row(str(c["a"]), f"{c['a_median_s'] * 1000:.0f} ms", c["precision"][0].replace("off", "fp32"))
    t.add_row(str(c["b"]), f"{c['b_median_s'] * 1000:.0f} ms", c["precision"][1].replace("off", "fp32"))
    out.print(t)
    verdict = "[yellow]noisy machine[/] " if c["noisy"] else ""
    out.print(
        f"{verdict}ratio {c['b']} / {c['a']}: [bold]{c['ratio_b_over_a']:.3f}[/] (median of {c['pairs_kept']} "
        f"interleaved pairs kept of {c['attempts']})"
    )


def _parse_weightings(text: str) -> tuple[str, ...]:
    from crosstask_cli.weighting import weighting_names

    names = weighting_names() if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in weighting_names()]
    if bad or not names:
        raise CLIError(f"--weighting {text!r}: {', '.join(bad) or 'nothing'} is not one of all, "
                       f"{', '.join(weighting_names())}")  # fmt: skip
    return names


def _render_weightings(res, cfg) -> None:
    w = res.figures["weightings"]
    precision = w["precision"].replace("off", "fp32")
    t = Table(title=f"crosstask bench --weighting · training step · ResNet-{cfg.enc_layers}, {cfg.height}×{cfg.width}, "
                    f"batch {cfg.batch_size}, {res.device} {precision}", title_justify="left")  # fmt: skip
    for col in ("method", "kind", "median step", "× fixed", "target", "peak memory", "× fixed", ""):
        t.add_column(col, justify="left" if col in ("method", "kind", "") else "right")
    targets = res.targets()
    for name, row in w["methods"].items():
        target = targets.get(f"weighting_{name}_vs_fixed")
        mem = row["memory_vs_fixed"]
        t.add_row(name, row["kind"], f"{row['median_s'] * 1000:.0f} ms", f"{row['ratio_vs_fixed']:.3f}",
                  f"≤ {target[1]:g}" if target else "", f"{row['peak_memory_gb']:.2f} GB",
                  f"{mem:.3f}" if mem is not None else "", STYLES[target[2]] if target else "")  # fmt: skip
    out.print(t)
    verdict = "[yellow]noisy machine:[/] " if w["noisy"] else ""
    out.print(
        f"{verdict}median of {w['rounds_kept']} interleaved rounds kept of {w['attempts']}; memory: {w['memory']}"
    )
