"""``crosstask predict``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import AMP_HELP, err, esc, handle_errors, out

HELP = """Predict segmentation and depth for images (files and folders) with a checkpoint.

Writes, at each input's original size: STEM_seg.png (class ids), STEM_seg_color.png, STEM_depth.npy (float32, the
dataset's depth units) and STEM_depth_color.png (the colour renderings are indexed-colour PNGs); with --transfer also the TaskTransferNets' STEM_seg_transfer* and
STEM_depth_transfer*; with --energy the consistency energy STEM_energy.npy and STEM_energy_color.png. With
--format cityscapes: only STEM_labelIds.png (Cityscapes labelIds, what the official
evaluator and the benchmark server read). Folder structure is kept. Unreadable files are skipped and listed; the
exit code is 1 only when nothing could be processed. An existing non-empty --out needs --force (inputs are never
overwritten).
"""


@handle_errors
def predict_command(
    inputs: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG, BMP, TIFF, WebP) and/or folders."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint (best.pt or last.pt of a run)."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders of folder inputs."),
    transfer: bool = typer.Option(
        False, "--transfer", help="Also write the transferred predictions (runs the TaskTransferNets)."
    ),
    energy: bool = typer.Option(
        False,
        "--energy",
        help="Also write each image's consistency energy (models with TaskTransferNets): STEM_energy.npy (float32, "
        "combined ½·seg KL + ½·|depth gap| per pixel, at the input's size) and STEM_energy_color.png, its mean per "
        "image in predictions.json, and list the least reliable images (highest energy) at the end.",
    ),
    fmt: str = typer.Option(
        "crosstask",
        "--format",
        help="crosstask: class ids, colour renderings and depth per image. cityscapes: one PNG of Cityscapes "
        "labelIds per image, at its size, plus predictions.json (19 classes: trainId → labelId by the official table; "
        "7 classes: each category → road, building, pole, vegetation, sky, person, car, which the official "
        "category scores count exactly), for the official evaluator and benchmark submissions.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda[:N] or mps."),
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        help="Threads that decode/resize the next images and encode/write the previous ones while the model runs; "
        "0: one per CPU core this process may use (at least 2). Full-size outputs cost more CPU than a GPU's "
        "forward pass, so on a GPU machine more cores mean more images/s.",
    ),
    amp: str = typer.Option(
        "auto",
        "--amp",
        help=AMP_HELP,
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into an existing predictions folder (one with the predictions.json of an earlier predict), "
        "replacing same-named outputs; any other non-empty folder is refused.",
    ),
) -> None:
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.predict import predict

    with Progress(*progress_columns(), console=err, transient=True) as prog:
        task = prog.add_task("predict", total=None, info="")
        result = predict(
            inputs,
            ckpt,
            out_dir,
            batch_size,
            recursive,
            transfer,
            device,
            force,
            progress=lambda n: prog.advance(task, n),
            on_total=lambda n: prog.update(task, total=n),
            amp=amp,
            workers=workers,
            fmt=fmt,
            energy=energy,
        )
    for path, reason in result.skipped:
        err.print(f"[yellow]skipped[/] {esc(path)}: {esc(reason)}", highlight=False)
    n, s = len(result.written), len(result.skipped)
    if n == 0:
        err.print(f"[bold red]error:[/] no image could be processed ({s} skipped)")
        raise typer.Exit(1)
    if result.energies:
        worst = result.least_reliable(10)
        out.print(f"least reliable images (highest consistency energy; {len(result.energies)} in predictions.json):")
        for rel, value in worst:
            out.print(f"  {value:10.4g}  {esc(rel)}", highlight=False)
    out.print(
        f"[green]predicted[/] {n} image(s) → [bold]{esc(out_dir)}[/] in {result.seconds:.1f} s "
        f"({result.images_per_second:.2f} images/s)" + (f"; skipped {s}" if s else "")
    )
