"""``crosstask prepare {cityscapes,nyu,synthetic}``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import CLIError, err, esc, handle_errors, out, progress_factory

app = typer.Typer(
    help="Convert a dataset into crosstask's prepared format (memory-mapped arrays + meta.json), or render "
    "the synthetic street scenes.",
    no_args_is_help=True,
)

FORCE = typer.Option(
    False, "--force", help="Replace an existing output directory (it is only removed once the new one is complete)."
)
SEED = typer.Option(0, "--seed", help="Seed for --val-from-train's choice of held-out images.")
WORKERS = typer.Option(2, "--workers", min=1, help="Threads decoding files in parallel.")
VAL_FROM_TRAIN = typer.Option(
    0,
    "--val-from-train",
    min=0,
    help="Also hold out N training images as a 'holdout' split for model selection (the official val split stays the evaluation split).",
)


def _report(path: Path) -> None:
    from crosstask_cli.data.prepared import read_meta

    meta = read_meta(path)
    splits = ", ".join(f"{k}: {v}" for k, v in meta.splits.items())
    out.print(
        f"[green]prepared[/] {meta.dataset} → [bold]{esc(path)}[/] ({meta.height}×{meta.width}, "
        f"{meta.num_classes} classes{f' ({meta.categories} categories)' if meta.categories else ''}, depth "
        f"{meta.depth_kind}; {splits})"
    )


def _require_src(src: Path | None) -> Path:
    if src is None:
        raise CLIError("missing --src: the dataset directory to convert")
    return src


@app.command("cityscapes")
@handle_errors
def cityscapes(
    src: Path = typer.Option(
        None,
        "--src",
        help="Cityscapes in the official layout (leftImg8bit/, gtFine/, disparity/, optional camera/) or MTAN's preprocessed layout ({train,val}/{image,label_7,label_19,depth}/).",
    ),
    out_dir: Path = typer.Option(..., "--out", help="Output directory of the prepared dataset."),
    height: int = typer.Option(128, "--height", min=8, help="Output height in pixels (the paper: 128)."),
    width: int = typer.Option(256, "--width", min=8, help="Output width in pixels (the paper: 256)."),
    num_classes: int = typer.Option(
        7, "--num-classes", help="7 (Cityscapes categories) or 19 (official train classes)."
    ),
    depth: str = typer.Option(
        "inverse",
        "--depth",
        help="inverse: (p−1)/65536 clipped at 0.4922, as the original and MTAN; metric: metres from the camera json.",
    ),
    categories: str = typer.Option(
        "original",
        "--categories",
        help="7 classes only: original (default; every label to its category, as the original method and MTAN) or "
        "official (the labels the official evaluation ignores, e.g. parking, guard rail, caravan, become 255). "
        "Needs the official raw layout.",
    ),
    val_from_train: int = VAL_FROM_TRAIN,
    seed: int = SEED,
    workers: int = WORKERS,
    force: bool = FORCE,
) -> None:
    """Prepare Cityscapes (official raw or MTAN layout, detected automatically)."""
    from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes

    if depth not in ("inverse", "metric"):
        raise CLIError(f"--depth must be inverse or metric, got {depth!r}")
    opts = PrepareOptions(height, width, num_classes, depth, val_from_train, seed, workers, force, categories)
    with progress_factory() as progress:
        path = prepare_cityscapes(_require_src(src), out_dir, opts, progress)
    _report(path)


@app.command("nyu")
@handle_errors
def nyu(
    src: Path = typer.Option(
        None, "--src", help="MTAN's preprocessed NYUv2: {train,val}/{image,label,depth,normal}/<i>.npy."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Output directory of the prepared dataset."),
    height: int = typer.Option(288, "--height", min=8, help="Output height (the paper: 288)."),
    width: int = typer.Option(384, "--width", min=8, help="Output width (the paper: 384)."),
    val_from_train: int = VAL_FROM_TRAIN,
    seed: int = SEED,
    workers: int = WORKERS,
    force: bool = FORCE,
) -> None:
    """Prepare NYUv2 (13 classes, metric depth) from MTAN's preprocessed arrays."""
    from crosstask_cli.data.prepare import PrepareOptions, prepare_nyu

    opts = PrepareOptions(height, width, 13, "metric", val_from_train, seed, workers, force)
    with progress_factory() as progress:
        path = prepare_nyu(_require_src(src), out_dir, opts, progress)
    _report(path)


@app.command("synthetic")
@handle_errors
def synthetic(
    out_dir: Path = typer.Option(
        Path("data/synthetic"), "--out", help="Where to write the scenes (official Cityscapes raw layout)."
    ),
    train: int = typer.Option(400, "--train", min=1, help="Number of training scenes."),
    val: int = typer.Option(100, "--val", min=1, help="Number of validation scenes."),
    height: int = typer.Option(256, "--height", min=16, help="Rendered image height."),
    width: int = typer.Option(512, "--width", min=16, help="Rendered image width."),
    seed: int = typer.Option(0, "--seed", help="Scene seed: the same seed renders the same scenes."),
    force: bool = FORCE,
) -> None:
    """Render procedural street scenes with exact labels and depth, written as Cityscapes raw files."""
    from crosstask_cli.data.prepare import prepare_synthetic

    with progress_factory() as progress:
        path = prepare_synthetic(out_dir, train, val, height, width, seed, force, progress)
    out.print(
        f"[green]rendered[/] {train} train + {val} val scenes ({height}×{width}) → [bold]{esc(path)}[/] "
        "(Cityscapes raw layout; use it with `--data` or `crosstask prepare cityscapes --src`)"
    )
    err.print("", end="")
