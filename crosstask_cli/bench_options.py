"""The options of ``crosstask bench``: :class:`BenchConfig`, each field with its flag and help, and the parts and
targets the command knows. Imports nothing heavy: the command line draws ``--help`` from here (the measurements
are in :mod:`crosstask_cli.bench`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from crosstask_cli.errors import ConfigError
from crosstask_cli.options import check_positive_int, field_table, option

PARTS = ("model", "metrics", "energy", "loader", "tasks", "archs")
DEFAULT_PARTS = PARTS[:4]
MAX_OTHERS = 0.3  # cores other processes may use during a timed repetition before it is dropped
# Targets of the weighting issue: step time against fixed, by kind of method (ResNet-34, 128×256, batch 8)
WEIGHTING_TARGETS = {"loss": 1.05, "gradient": 1.3}
COMPARABLE = ("weighting", "amp", "batch_size", "channels_last")  # settings --compare can set
AMP_HELP = "Precision: auto (bf16 on CPUs with native bf16 and on bf16 GPUs, else fp32), off (fp32), bf16, fp16."


@dataclass
class BenchConfig:
    """What ``crosstask bench`` measures on (the model and its inputs) and how (repetitions, the load filter)."""

    arch: str = option(
        "resnet",
        "The network measured: resnet (default), segnet-mtan, segnet or adamt-net (built for --height×--width). "
        "--part archs times every architecture against resnet.",
    )
    enc_layers: int = option(34, "ResNet depth (18, 34, 50, 101, 152; --arch resnet).")
    num_classes: int = option(7, "Segmentation classes.")
    height: int = option(128, "Input height.")
    width: int = option(256, "Input width.")
    batch_size: int = option(8, "Batch size.")
    device: str = option("auto", "auto, cpu, cuda[:N] or mps.")
    amp: str = option("auto", AMP_HELP)
    runs: int = option(5, "Timed runs per figure (after warm-up).")
    warmup: int = option(2, "Untimed warm-up runs.")
    matmul_n: int = option(4096, "Size n of the n×n fp32 matmul reference.", flag="--matmul-size")
    data: str | None = option(
        None, "Prepared dataset for the loader figure (default: a small synthetic one).", cli_type=Path
    )
    raw_samples: int = option(4, "Full-size 2048×1024 raw samples to decode for the loader baseline (0 skips it).")
    weighting: str = option("fixed", "task weighting of the training step", flag=None)
    channels_last: bool | None = option(None, "default: as training uses it (engine.device.memory_format)", flag=None)
    max_others: float = option(
        MAX_OTHERS,
        "Drop (and repeat) a timed run during which other processes used more than this many CPU cores; too few clean "
        "runs make a figure 'noisy machine' instead of 'not met'.",
    )
    quiet_wait_s: float = option(
        30.0, "Seconds to wait for a quiet machine before measuring (0: no wait).", flag="--quiet-wait"
    )
    compare: tuple[str, str, str] | None = option(None, "(setting, A, B) timed interleaved", flag=None)
    weightings: tuple[str, ...] | None = option(None, "methods timed against fixed", flag=None)
    tasks: tuple[str, ...] = option(
        ("seg", "depth"),
        "The model's tasks for the model, metrics and energy figures, comma-separated (seg,depth; with normal every "
        "ordered pair gets a TaskTransferNet).",
        cli_type=str,
    )
    transfer: bool = option(True, "the TaskTransferNets (False: plain multi-task learning)", flag=None)

    def __post_init__(self) -> None:
        from crosstask_cli.architectures import arch_names, get_arch
        from crosstask_cli.tasks import parse_tasks

        self.tasks = parse_tasks(self.tasks)
        if self.arch not in arch_names():
            raise ConfigError(f"--arch must be one of {', '.join(arch_names())}, got {self.arch!r}")
        m = get_arch(self.arch).size_multiple
        if get_arch(self.arch).needs_input_size and (self.height % m or self.width % m):
            raise ConfigError(f"--arch {self.arch} needs --height and --width multiples of {m}")
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--runs", self.runs, 1),
                                 ("--warmup", self.warmup, 0), ("--matmul-size", self.matmul_n, 256),
                                 ("--raw-samples", self.raw_samples, 0)):  # fmt: skip
            check_positive_int(value, flag, minimum=low)
        for flag, value in (("--height", self.height), ("--width", self.width)):
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ConfigError(
                    f"{flag} must be a positive multiple of 8 (the TaskTransferNet pools three times), got {value}"
                )
        for flag, value in (("--max-others", self.max_others), ("--quiet-wait", self.quiet_wait_s)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} must be a finite number ≥ 0, got {value!r}")


BENCH_FIELDS = {k: f for k, f in field_table(BenchConfig).items() if f.flag is not None}
