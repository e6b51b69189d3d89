"""``crosstask train {cityscapes,nyu,synthetic}``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import CLIError, err, esc, fmt, fmt_sig, handle_errors, out

HELP = """Train CrossTaskNet (ResNet encoder, two decoders, two TaskTransferNets) with cross-task consistency.

Unset options take the paper's defaults for the dataset: cityscapes 128×256, 250 epochs, batch 8, StepLR 80/0.5,
α = γ = 0.01, 7 classes; nyu 288×384, 100 epochs, batch 6, StepLR 60/0.5, α = γ = 1e-4; synthetic as cityscapes with
30 epochs (StepLR 20). Adam, lr 1e-4, betas (0.9, 0.99) (or --optimizer sgd). `--data` may be raw Cityscapes, MTAN arrays or a prepared
directory (raw/MTAN data is prepared once into DATA/.crosstask/ and reused). The paper's best results use
`--weighting uncertainty`.
"""


def _reporter():
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.engine.trainer import TrainReporter

    class RichReporter(TrainReporter):
        def __init__(self) -> None:
            self.progress = Progress(*progress_columns(), console=err, transient=True)
            self.task = None

        def start(self, info: dict) -> None:
            resumed = f", resuming after epoch {info['start_epoch']}" if info["start_epoch"] else ""
            err.print(
                f"[bold]training[/] on {info['device']}: {info['train']} train images, model selection on "
                f"'{info['select_split']}' ({info['val']} images), {info['params']:,} parameters{resumed}\n"
                f"run directory: [bold]{esc(info['run_dir'])}[/]"
            )
            self.progress.start()

        def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, info="")

        def step(self, loss: float | None) -> None:
            if loss is not None:
                self.progress.update(self.task, advance=1, info=f"loss {loss:.4f}")
            else:
                self.progress.advance(self.task)

        def eval_start(self, split: str, images: int) -> None:
            self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"validate ({split})", total=images, info="")

        def eval_advance(self, n: int) -> None:
            self.progress.advance(self.task, n)

        def epoch_end(self, row: dict) -> None:
            from rich import box

            weights = " ".join(
                f"{k.removeprefix('weight_').removesuffix('_task')} {fmt_sig(float(v))}"
                for k, v in row.items()
                if k.startswith("weight_")
            )
            title = (
                f"epoch {row['epoch']} · {row['seconds']:.0f} s · lr {float(row['lr']):.2g} · task weights {weights}"
                + (" · [bold green]★ best[/]" if row.get("best") else "")
            )
            t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
            losses = ("seg", "depth", "tseg", "tdepth")
            for name in ("", *losses, "loss", "mIoU", "pixacc", "abs", "absrel"):
                t.add_column(name, justify="right" if name else "left", no_wrap=True)
            t.add_row("train", *(fmt_sig(float(row[f"train_{k}"])) for k in losses), fmt_sig(float(row["train_total"])))
            val = [row.get(f"val_{k}") for k in (*losses, "loss", "miou", "pixel_acc", "abs_err", "rel_err")]
            t.add_row(row.get("val_split", "val"), *(fmt_sig(float(v)) if v is not None else "" for v in val))
            self.progress.console.print(t)

        def message(self, text: str) -> None:
            self.progress.console.print(f"[yellow]{esc(text)}[/]")

        def end(self, result) -> None:
            self.progress.stop()

    return RichReporter()


@handle_errors
def train_command(
    dataset: str = typer.Argument(..., help="cityscapes | nyu | synthetic"),
    data: Path = typer.Option(
        None,
        "--data",
        help="Dataset directory (raw, MTAN or prepared). Default: data/<dataset>; synthetic data is generated there if missing.",
    ),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default runs/<dataset>-<timestamp>)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --run-dir from checkpoints/last.pt (its saved config is used; --epochs, --device, --workers may change).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --run-dir."),
    config: Path = typer.Option(
        None, "--config", help="A run's config.json: reproduce it (options given here override it)."
    ),
    height: int = typer.Option(None, "--height", help="Input height, multiple of 8 (cityscapes 128, nyu 288)."),
    width: int = typer.Option(None, "--width", help="Input width, multiple of 8 (cityscapes 256, nyu 384)."),
    epochs: int = typer.Option(None, "--epochs", help="Number of epochs (cityscapes 250, nyu 100, synthetic 30)."),
    enc_layers: int = typer.Option(
        None, "--enc-layers", help="ResNet depth of the encoder: 18, 34 (default), 50, 101, 152."
    ),
    pretrained: bool = typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Start the encoder from torchvision's ImageNet weights, read from the local torch cache (never downloaded).",
    ),
    encoder_weights: Path = typer.Option(
        None, "--encoder-weights", help="Start the encoder from a local ResNet state dict (.pth) instead."
    ),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (cityscapes 8, nyu 6)."),
    optimizer: str = typer.Option(
        None, "--optimizer", help="adam (default, the paper's) or sgd (momentum 0.9, the original's alternative)."
    ),
    lr: float = typer.Option(None, "--lr", help="Initial learning rate (1e-4)."),
    betas: tuple[float, float] = typer.Option(None, "--betas", help="Adam betas (0.9 0.99); unused by sgd."),
    scheduler_step_size: int = typer.Option(
        None, "--scheduler-step-size", help="StepLR step in epochs (cityscapes 80, nyu 60)."
    ),
    scheduler_gamma: float = typer.Option(None, "--scheduler-gamma", help="StepLR decay factor (0.5)."),
    alpha: float = typer.Option(
        None,
        "--alpha",
        help="Weight of the transferred-depth loss in the segmentation task loss, λ1 (cityscapes 0.01, nyu 1e-4).",
    ),
    gamma: float = typer.Option(
        None,
        "--gamma",
        help="Weight of the transferred-segmentation loss in the depth task loss, λ2 (cityscapes 0.01, nyu 1e-4).",
    ),
    label_smoothing: float = typer.Option(
        None, "--label-smoothing", help="Label smoothing ε of the transferred-segmentation CE (0)."
    ),
    lp: str = typer.Option(None, "--lp", help="Direct depth loss: l1 (default), mse, logl1, smoothl1."),
    tdep_loss: str = typer.Option(
        None, "--tdep-loss", help="Transferred depth loss against the detached direct depth: l1 (default) or ssim."
    ),
    tseg_loss: str = typer.Option(
        None,
        "--tseg-loss",
        help="Transferred segmentation loss against the argmax of the detached direct seg: ce (default; label-smoothed cross-entropy) or kl (KL from the smoothed one-hot, the original's definition); soft-kl distils the direct softmax instead (an extension). All are summed over labelled pixels and divided by all pixels, as the original.",
    ),
    ttnet_batch_norm: bool = typer.Option(
        None, "--ttnet-batch-norm/--no-ttnet-batch-norm", help="Batch norm after every TaskTransferNet conv."
    ),
    wider_ttnet: bool = typer.Option(
        None, "--wider-ttnet/--no-wider-ttnet", help="Double the TaskTransferNet channels."
    ),
    weighting: str = typer.Option(
        None,
        "--weighting",
        help="Task weighting: fixed (default), uncertainty (Kendall 2018), gradnorm (Chen 2018), dwa (Liu 2019), pcgrad (Yu 2020; one backward pass per task).",
    ),
    uncertainty_weights: bool = typer.Option(
        False, "--uncertainty-weights", help="Shorthand for --weighting uncertainty."
    ),
    gradnorm: bool = typer.Option(False, "--gradnorm", help="Shorthand for --weighting gradnorm."),
    gradnorm_alpha: float = typer.Option(
        None, "--gradnorm-alpha", help="GradNorm asymmetry α (0.16, the original's; the GradNorm paper used 1.5)."
    ),
    gradnorm_params: str = typer.Option(
        None,
        "--gradnorm-params",
        help="Where GradNorm measures task gradient norms: conv (default, as the original: the encoder's last conv weight, layer4[-1].conv2) or block (every parameter of the last layer4 block). Its weights always train with their own Adam (betas 0.9/0.999, the initial lr, no schedule).",
    ),
    tasks: str = typer.Option(
        None,
        "--tasks",
        help="seg,depth (default), or seg / depth alone for a single-task baseline (one decoder, no TaskTransferNets).",
    ),
    consistency: str = typer.Option(
        None,
        "--consistency",
        help="xtsc (default, the method: transferred predictions against the detached direct ones), xtc (against the ground truth, as the original's xtc: transferred depth with the --lp loss, transferred seg with plain cross-entropy; --tdep-loss, --tseg-loss and --label-smoothing do not apply) or none (plain multi-task learning, no TaskTransferNets).",
    ),
    dwa_temperature: float = typer.Option(None, "--dwa-temperature", help="Temperature T of --weighting dwa (2)."),
    num_classes: int = typer.Option(
        None, "--num-classes", help="Segmentation classes: cityscapes/synthetic 7 or 19, nyu 13."
    ),
    depth: str = typer.Option(
        None, "--depth", help="Cityscapes depth encoding when preparing raw data: inverse (default) or metric."
    ),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes (2)."),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N or mps."),
    seed: int = typer.Option(None, "--seed", help="Random seed (initialisation, shuffling, augmentation)."),
    amp: bool = typer.Option(
        None, "--amp/--no-amp", help="Mixed precision: bf16 where supported, else fp16 with a GradScaler."
    ),
    compile_model: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (GPU)."),
    max_steps_per_epoch: int = typer.Option(
        None, "--max-steps-per-epoch", help="Quick runs: cap the training batches per epoch."
    ),
    max_val_batches: int = typer.Option(
        None, "--max-val-batches", help="Quick runs: cap the validation batches per epoch."
    ),
    eval_batch_size: int = typer.Option(None, "--eval-batch-size", help="Validation batch size (8)."),
    select_metric: str = typer.Option(
        None, "--select-metric", help="best.pt by: loss (default, as the original), miou, pixel_acc, abs_err, rel_err."
    ),
    skip_nonfinite: int = typer.Option(
        None, "--skip-nonfinite", help="Tolerate up to N batches with a non-finite loss (skipped) before stopping (0)."
    ),
    sync_bn: bool = typer.Option(
        None,
        "--sync-bn/--no-sync-bn",
        help="Multi-GPU (torchrun): synchronise BatchNorm statistics across processes (CUDA only).",
    ),
    save_every_steps: int = typer.Option(
        None,
        "--save-every-steps",
        help="Also write last.pt every N steps inside an epoch (long epochs on preemptible machines); --resume continues from that step.",
    ),
    synthetic_train: int = typer.Option(
        None, "--synthetic-train", help="Scenes to generate for train when the synthetic set is missing (400)."
    ),
    synthetic_val: int = typer.Option(
        None, "--synthetic-val", help="Scenes to generate for val when the synthetic set is missing (100)."
    ),
) -> None:
    from crosstask_cli.engine.config import TrainConfig
    from crosstask_cli.engine.trainer import train

    if uncertainty_weights and gradnorm:
        raise CLIError("--uncertainty-weights and --gradnorm are exclusive")
    if uncertainty_weights or gradnorm:
        shorthand = "uncertainty" if uncertainty_weights else "gradnorm"
        if weighting not in (None, shorthand):
            raise CLIError(
                f"--weighting {weighting} contradicts --{'uncertainty-weights' if uncertainty_weights else 'gradnorm'}"
            )
        weighting = shorthand
    given = dict(
        data=str(data) if data else None,
        height=height,
        width=width,
        epochs=epochs,
        enc_layers=enc_layers,
        pretrained=pretrained,
        encoder_weights=str(encoder_weights) if encoder_weights else None,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        betas=tuple(betas) if betas else None,
        scheduler_step_size=scheduler_step_size,
        scheduler_gamma=scheduler_gamma,
        alpha=alpha,
        gamma=gamma,
        label_smoothing=label_smoothing,
        lp=lp,
        tdep_loss=tdep_loss,
        tseg_loss=tseg_loss,
        ttnet_batch_norm=ttnet_batch_norm,
        wider_ttnet=wider_ttnet,
        weighting=weighting,
        gradnorm_alpha=gradnorm_alpha,
        gradnorm_params=gradnorm_params,
        dwa_temperature=dwa_temperature,
        tasks=tuple(t.strip() for t in tasks.split(",")) if tasks else None,
        consistency=consistency,
        num_classes=num_classes,
        depth=depth,
        workers=workers,
        device=device,
        seed=seed,
        amp=amp,
        compile=compile_model,
        max_steps_per_epoch=max_steps_per_epoch,
        max_val_batches=max_val_batches,
        eval_batch_size=eval_batch_size,
        select_metric=select_metric,
        skip_nonfinite=skip_nonfinite,
        save_every_steps=save_every_steps,
        sync_bn=sync_bn,
        synthetic_train=synthetic_train,
        synthetic_val=synthetic_val,
    )
    if resume:
        if run_dir is None:
            raise CLIError("--resume needs --run-dir: the run to continue")
        allowed = {"epochs", "device", "workers"}
        saved_path = run_dir / "config.json"
        saved = TrainConfig.load(saved_path).to_dict() if saved_path.is_file() else {}
        # Repeating the original command with --resume is fine; changing the recipe is not.
        changed = sorted(
            k
            for k, v in given.items()
            if v is not None and k not in allowed and (list(v) if isinstance(v, tuple) else v) != saved.get(k)
        )
        if changed:
            raise CLIError(
                f"--resume continues the saved config; it cannot change {', '.join('--' + c.replace('_', '-') for c in changed)}"
            )
        cfg = TrainConfig.for_dataset(dataset)
        overrides = {k: given[k] for k in allowed if given[k] is not None}
    else:
        if config is not None:
            base = TrainConfig.load(config)
            if base.dataset != dataset:
                raise CLIError(f"{config} is a {base.dataset} config, but the command trains {dataset}")
            import dataclasses

            cfg = dataclasses.replace(base, run_dir=None).replace(**given)
        else:
            cfg = TrainConfig.for_dataset(dataset, **given)
        overrides = None
    import os

    from crosstask_cli.cli.common import progress_factory

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 talks
        train(cfg, run_dir=run_dir, resume=resume, force=force, resume_overrides=overrides)
        return
    with progress_factory() as data_progress:
        result = train(
            cfg,
            run_dir=run_dir,
            resume=resume,
            force=force,
            reporter=_reporter(),
            data_progress=data_progress,
            resume_overrides=overrides,
        )
    ckpts = result.run_dir / "checkpoints"
    out.print(
        f"[green]done[/]: {result.epochs_done} epochs; best epoch {result.best_epoch} "
        f"({cfg.select_metric} {fmt(result.best_score)})\n"
        f"  checkpoints: {esc(ckpts / 'best.pt')}, {esc(ckpts / 'last.pt')}\n"
        f"  log: {esc(result.run_dir / 'metrics.csv')}   curves: {esc(result.run_dir / 'plots')}"
    )
