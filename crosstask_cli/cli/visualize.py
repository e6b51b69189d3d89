"""``crosstask visualize {predictions,samples,curves}``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import CLIError, esc, handle_errors, out

app = typer.Typer(
    help="Draw PNG figures: prediction panels, dataset/prediction sample grids, training curves.", no_args_is_help=True
)


@app.command("predictions")
@handle_errors
def predictions(
    pred_dir: Path = typer.Argument(..., help="A folder written by `crosstask predict`."),
    out_dir: Path = typer.Option(None, "--out", help="Where to write <id>_panel.png (default PRED_DIR/panels)."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many panels."),
) -> None:
    """One panel per image: image | segmentation overlay | depth (+ transferred predictions when present)."""
    from crosstask_cli.outputs import check_output_folder
    from crosstask_cli.visualize import prediction_panels

    check_output_folder(out_dir or pred_dir / "panels", "--out", {"PRED_DIR": pred_dir})
    paths = prediction_panels(pred_dir, out_dir or pred_dir / "panels", limit)
    out.print(f"[green]wrote[/] {len(paths)} panel(s) to [bold]{esc(out_dir or pred_dir / 'panels')}[/]")


@app.command("samples")
@handle_errors
def samples(
    data: Path = typer.Option(..., "--data", help="Dataset (prepared, raw or MTAN)."),
    out_file: Path = typer.Option(Path("samples.png"), "--out", help="Output PNG."),
    ckpt: Path = typer.Option(
        None, "--ckpt", help="Also show this model's direct and transferred predictions and the depth error."
    ),
    split: str = typer.Option("val", "--split", help="Split to draw from."),
    count: int = typer.Option(4, "-n", "--count", min=1, help="Number of samples (rows)."),
    seed: int = typer.Option(None, "--seed", help="Pick random samples with this seed (default: the first ones)."),
    height: int = typer.Option(
        None, "--height", help="Size to prepare raw data at (default: the checkpoint's, else 128)."
    ),
    width: int = typer.Option(
        None, "--width", help="Size to prepare raw data at (default: the checkpoint's, else 256)."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the model."),
) -> None:
    """A grid of dataset samples with ground truth (and predictions with --ckpt)."""
    from crosstask_cli.data.prepare import detect_layout, resolve_data
    from crosstask_cli.outputs import check_output_file
    from crosstask_cli.visualize import sample_grid

    if out_file.suffix.lower() != ".png":
        raise CLIError(f"--out {out_file}: expected a .png file name")
    check_output_file(out_file, "--out", {"--data": data, "--ckpt": ckpt})
    prepared = data
    if (height or width) and (ckpt is not None or detect_layout(data) == "prepared"):
        raise CLIError(
            "--height/--width choose the size to prepare raw data at without --ckpt; here the size is given by "
            + ("the checkpoint" if ckpt is not None else f"the prepared dataset {data}")
        )
    if detect_layout(data) != "prepared":
        if ckpt is not None:
            from crosstask_cli.engine.checkpoint import load_checkpoint
            from crosstask_cli.engine.data_paths import resolve_eval_data

            prepared = resolve_eval_data(load_checkpoint(ckpt), data)
        else:
            from crosstask_cli.data.datasets import dataset_for_layout

            info = dataset_for_layout(detect_layout(data))
            prepared = resolve_data(info.name, data, height or 128, width or 256, info.default_classes)
    path = sample_grid(prepared, out_file, split, count, ckpt, device, seed)
    out.print(f"[green]wrote[/] [bold]{esc(path)}[/]")


@app.command("curves")
@handle_errors
def curves(
    run_dir: Path = typer.Argument(..., help="A run directory (or its metrics.csv)."),
    out_dir: Path = typer.Option(None, "--out", help="Output folder (default RUN/plots)."),
) -> None:
    """Loss and metric curves (losses.png, metrics.png) from a run's metrics.csv."""
    from crosstask_cli.outputs import check_output_folder
    from crosstask_cli.visualize import curves_from_run

    if out_dir is not None:
        check_output_folder(out_dir, "--out", {"RUN": run_dir})
    paths = curves_from_run(run_dir, out_dir)
    out.print("[green]wrote[/] " + ", ".join(f"[bold]{esc(p)}[/]" for p in paths))
