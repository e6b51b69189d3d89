"""``crosstask demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import AMP_HELP, esc, fmt, handle_errors, out, progress_factory

HELP = """Run the whole lifecycle on generated street scenes in a few minutes on a CPU: render a synthetic
Cityscapes-layout dataset, train a small model (ResNet-18, 64×128) choosing its best epoch on held-out
training scenes, evaluate it on the val scenes, predict on validation images and draw figures. Prints where
each artefact is."""


@handle_errors
def demo_command(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="Folder for everything the demo writes."),
    epochs: int = typer.Option(7, "--epochs", min=1, help="Training epochs."),
    train_images: int = typer.Option(240, "--train-images", min=8, help="Synthetic training scenes."),
    device: str = typer.Option("auto", "--device", help="Device (auto, cpu, cuda, mps)."),
    amp: str = typer.Option(
        "auto",
        "--amp",
        help=AMP_HELP,
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier demo in --out (a folder with its demo.json; nothing else)."
    ),
) -> None:
    from crosstask_cli.cli.reporting import rich_train_reporter
    from crosstask_cli.demo import DemoSettings, run_demo

    settings = DemoSettings(epochs=epochs, train=train_images, device=device, amp=amp)
    with progress_factory() as progress:
        res = run_demo(out_dir, settings, force=force, reporter=rich_train_reporter(), progress=progress)
    seg, dep = res.metrics["segmentation"], res.metrics["depth"]
    t = Table(title=f"demo · val split · best epoch picked on {settings.holdout} held-out scenes", title_justify="left")
    for col in ("mIoU", "pixel acc", "abs err", "abs rel err", "seg agreement"):
        t.add_column(col, justify="right")
    t.add_row(
        fmt(seg["miou"]),
        fmt(seg["pixel_acc"]),
        fmt(dep["abs_err"]),
        fmt(dep["rel_err"]),
        fmt(res.metrics.get("consistency", {}).get("seg_agreement", float("nan"))),
    )
    out.print(t)
    a = Table(title="artefacts", title_justify="left", show_header=False)
    for name, path in res.artefacts.items():
        a.add_row(name, esc(path))
    out.print(a)
    out.print(
        f"next: [bold]crosstask eval --ckpt {esc(res.artefacts['best checkpoint'])}[/] · "
        f"[bold]crosstask predict IMAGES --ckpt {esc(res.artefacts['best checkpoint'])} --out preds[/]"
    )
