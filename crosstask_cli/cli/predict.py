"""``crosstask predict``."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from crosstask_cli.cli.common import err, esc, handle_errors, out
from crosstask_cli.cli.options import UNSET, parameter, signature, values
from crosstask_cli.predict import PREDICT_FIELDS

HELP = """Predict every task of a checkpoint's model for images (files and folders).

Writes, at each input's original size: STEM_seg.png (class ids), STEM_seg_color.png, STEM_depth.npy (float32, the
dataset's depth units), STEM_depth_color.png (the colour renderings are indexed-colour PNGs) and, for models with
normals, STEM_normal.npy (float32 H×W×3 unit vectors) and STEM_normal_color.png ((n + 1)/2 as RGB); with --transfer
also the TaskTransferNets' predictions (STEM_seg_transfer*, STEM_depth_transfer*, STEM_normal_transfer_from_seg*,
…); with --energy the consistency energy STEM_energy.npy and STEM_energy_color.png. With
--format cityscapes: only STEM_labelIds.png (Cityscapes labelIds, what the official
evaluator and the benchmark server read). Folder structure is kept. Unreadable files are skipped and listed; the
exit code is 1 only when nothing could be processed. An existing non-empty --out needs --force (inputs are never
overwritten).
"""


def _predict_command(inputs: list[Path], ckpt: Path, out_dir: Path, **options) -> None:
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.predict import PredictOptions, predict

    opts = PredictOptions(**values(PREDICT_FIELDS, options))
    with Progress(*progress_columns(), console=err, transient=True) as prog:
        task = prog.add_task("predict", total=None, info="")
        result = predict(inputs, ckpt, out_dir, opts, progress=lambda n: prog.advance(task, n),
                         on_total=lambda n: prog.update(task, total=n))  # fmt: skip
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


def _signature():
    kw = inspect.Parameter.KEYWORD_ONLY
    head = [
        inspect.Parameter("inputs", kw, annotation=list[Path], default=typer.Argument(
            ..., help="Image files (JPEG, PNG, BMP, TIFF, WebP) and/or folders.")),
        inspect.Parameter("ckpt", kw, annotation=Path, default=typer.Option(
            ..., "--ckpt", help="Checkpoint (best.pt or last.pt of a run).")),
        inspect.Parameter("out_dir", kw, annotation=Path, default=typer.Option(..., "--out", help="Output folder.")),
    ]  # fmt: skip
    defaults = {"amp": "auto"}  # the command's; the Python API predicts in fp32 unless asked
    return signature([*head, *(parameter(f, defaults.get(f.name, UNSET)) for f in PREDICT_FIELDS.values())])


predict_command = handle_errors(_predict_command)
predict_command.__signature__ = _signature()  # Typer reads the options here
