"""``crosstask train {cityscapes,nyu,synthetic}``: its options are derived from the config's option table."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from crosstask_cli.cli.common import CLIError, esc, fmt, handle_errors, out
from crosstask_cli.cli.options import from_cli, parameter, signature
from crosstask_cli.cli.reporting import rich_train_reporter
from crosstask_cli.engine.config import DATASETS, FIELDS

HELP = """Train CrossTaskNet (ResNet encoder, a decoder per task, a TaskTransferNet per ordered pair of tasks) with
cross-task consistency: seg and depth by default; `--tasks seg,depth,normal` on nyu or synthetic adds surface
normals (6 TaskTransferNets; `--transfer-pairs` chooses fewer). The original's baselines: `--arch segnet-mtan`
(MTAN), `--arch segnet`, `--arch adamt-net`, `--method kd4mtl --teacher TASK=CKPT`; `--preset mtan` is the field's
standard protocol on SegNet-MTAN.

Unset options take the paper's defaults for the dataset: cityscapes 128×256, 250 epochs, batch 8, StepLR 80/0.5,
α = γ = 0.01, 7 classes; nyu 288×384, 100 epochs, batch 6, StepLR 60/0.5, α = γ = 1e-4; synthetic as cityscapes with
30 epochs (StepLR 20). Adam, lr 1e-4, betas (0.9, 0.99) (or --optimizer sgd). `--data` may be raw Cityscapes, MTAN
arrays or a prepared directory (raw/MTAN data is prepared once into DATA/.crosstask/ and reused). The paper's best
results use `--weighting uncertainty`. Every option is also reachable as `--set SECTION.FIELD=VALUE` (the sections of
config.json: data, model, loss, optim, runtime).
"""

# Options of the command itself, not of the training config.
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "resume": (
        bool,
        typer.Option(
            False,
            "--resume",
            help="Continue the run in --run-dir from checkpoints/last.pt (its saved config is used; --epochs, "
            "--device, --workers may change).",
        ),
    ),
    "force": (bool, typer.Option(False, "--force", help="Replace an existing run in --run-dir.")),
    "config": (
        Path,
        typer.Option(None, "--config", help="A run's config.json: reproduce it (options given here override it)."),
    ),
    "assignments": (
        list[str],
        typer.Option(
            None,
            "--set",
            help="Override any config field: --set optim.lr=3e-4 --set model.tasks=seg (applied after the other "
            "options; repeatable).",
        ),
    ),
}
SHORTHANDS: dict[str, tuple[Any, Any]] = {
    "uncertainty_weights": (
        bool,
        typer.Option(False, "--uncertainty-weights", help="Shorthand for --weighting uncertainty."),
    ),
    "gradnorm": (bool, typer.Option(False, "--gradnorm", help="Shorthand for --weighting gradnorm.")),
}
FIRST = ("data", "run_dir")  # shown first in --help, before the run options


def _signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("dataset", kw, annotation=str, default=typer.Argument(..., help=" | ".join(DATASETS)))]
    fields = [f for f in FIELDS.values() if f.flag is not None]
    ordered = [f for k in FIRST for f in fields if f.kwarg == k] + [f for f in fields if f.kwarg not in FIRST]
    # every config option defaults to None: the paper's value for the dataset
    params += [parameter(info, default=None, name=info.kwarg) for info in ordered[: len(FIRST)]]
    for name, (ann, opt) in RUN_OPTIONS.items():
        params.append(inspect.Parameter(name, kw, annotation=ann, default=opt))
    for info in ordered[len(FIRST) :]:
        params.append(parameter(info, default=None, name=info.kwarg))
        if info.kwarg == "weighting":
            for name, (ann2, opt2) in SHORTHANDS.items():
                params.append(inspect.Parameter(name, kw, annotation=ann2, default=opt2))
    return signature(params)


def _train_command(**options: Any) -> None:
    from crosstask_cli.engine.config import TrainConfig
    from crosstask_cli.engine.rundir import CONFIG, RESUME_MAY_CHANGE
    from crosstask_cli.engine.trainer import train

    dataset = options.pop("dataset")
    resume, force, config = options.pop("resume"), options.pop("force"), options.pop("config")
    assignments = list(options.pop("assignments") or [])
    uncertainty_weights, gradnorm = options.pop("uncertainty_weights"), options.pop("gradnorm")
    given = {k: from_cli(FIELDS[k], v) for k, v in options.items()}
    run_dir = Path(given["run_dir"]) if given["run_dir"] else None
    if uncertainty_weights and gradnorm:
        raise CLIError("--uncertainty-weights and --gradnorm are exclusive")
    if uncertainty_weights or gradnorm:
        shorthand = "uncertainty" if uncertainty_weights else "gradnorm"
        if given["weighting"] not in (None, shorthand):
            raise CLIError(
                f"--weighting {given['weighting']} contradicts "
                f"--{'uncertainty-weights' if uncertainty_weights else 'gradnorm'}"
            )
        given["weighting"] = shorthand
    given["run_dir"] = None  # the run directory is an argument of train(), recorded by it
    if resume and force:
        raise CLIError("--resume continues the run in --run-dir and --force replaces it: give one of them")
    if resume:
        if run_dir is None:
            raise CLIError("--resume needs --run-dir: the run to continue")
        if assignments:
            raise CLIError("--resume continues the saved config; --set cannot change it")
        saved_path = run_dir / CONFIG
        saved = TrainConfig.load(saved_path).flat() if saved_path.is_file() else {}
        # Repeating the original command with --resume is fine; changing the recipe is not.
        changed = sorted(
            k for k, v in given.items() if v is not None and k not in RESUME_MAY_CHANGE and v != saved.get(k)
        )
        if changed:
            raise CLIError(
                f"--resume continues the saved config; it cannot change {', '.join(FIELDS[c].flag for c in changed)}"
            )
        cfg = TrainConfig.for_dataset(dataset)
        overrides = {k: given[k] for k in RESUME_MAY_CHANGE if given[k] is not None}
    else:
        if config is not None:
            base = TrainConfig.load(config)
            if base.data.name != dataset:
                raise CLIError(f"{config} is a {base.data.name} config, but the command trains {dataset}")
            cfg = TrainConfig.from_flat({**base.flat(), "run_dir": None}).replace(**given)
        else:
            cfg = TrainConfig.for_dataset(dataset, **given)
        cfg = cfg.with_assignments(assignments)
        overrides = None
        if config is not None and (run_dir or cfg.runtime.run_dir) is not None:
            from crosstask_cli.outputs import check_not_an_input

            check_not_an_input(run_dir or cfg.runtime.run_dir, "--run-dir", {"--config": config})
    import os

    from crosstask_cli.cli.common import progress_factory

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 talks
        train(cfg, run_dir=run_dir, resume=resume, force=force, resume_overrides=overrides)
        return
    reporter = rich_train_reporter()
    try:
        with progress_factory() as data_progress:
            result = train(cfg, run_dir=run_dir, resume=resume, force=force, reporter=reporter,
                           data_progress=data_progress, resume_overrides=overrides)  # fmt: skip
    except KeyboardInterrupt:
        where = getattr(reporter, "run_dir", None)
        if where is not None:  # training had started: its last checkpoint continues it
            from crosstask_cli.cli.common import err

            err.print(f"interrupted; continue with: crosstask train {dataset} --run-dir {esc(where)} --resume",
                      highlight=False, soft_wrap=True)  # fmt: skip
        raise
    ckpts = result.run_dir / "checkpoints"
    written = [p for p in (ckpts / "best.pt", ckpts / "last.pt") if p.is_file()]  # only files that exist
    best = (f"best epoch {result.best_epoch} ({cfg.runtime.select_metric} {fmt(result.best_score)})"
            if (ckpts / "best.pt").is_file() else "no best.pt (no epoch had a finite score)")  # fmt: skip
    out.print(
        f"[green]done[/]: {result.epochs_done} epochs; {best}\n"
        f"  checkpoints: {', '.join(esc(p) for p in written) or 'none'}\n"
        f"  log: {esc(result.run_dir / 'metrics.csv')}   curves: {esc(result.run_dir / 'plots')}"
    )


train_command = handle_errors(_train_command)
train_command.__signature__ = _signature()  # Typer reads the options from here
