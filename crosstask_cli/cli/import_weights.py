"""``crosstask import-weights``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import esc, handle_errors, out

HELP = """Turn a reference implementation's saved weights into a crosstask checkpoint that eval, predict, export and
info accept. --source mtan: a state dict saved from MTAN's published SegNet code (SegNet-MTAN or the split SegNet,
seg+depth or seg+depth+normal; MTAN's task order). The checkpoint is described with the dataset given by --data (its
classes must be the weights'); the model takes crosstask's images as MTAN's unnormalised RGB in [0, 1]. MTAN's
logsigma (uncertainty weighting) is kept in the checkpoint's 'imported' entry."""


@handle_errors
def import_weights_command(
    weights: Path = typer.Argument(..., help="The reference's saved state dict (.pth/.pt; weights only)."),
    out_file: Path = typer.Option(..., "--out", help="The crosstask checkpoint to write (.pt)."),
    data: Path = typer.Option(..., "--data", help="The dataset the weights were trained on: prepared, or MTAN's "
                              "preprocessed layout (prepared at the dataset's size, as eval does)."),
    source: str = typer.Option("mtan", "--source", help="Where the weights come from: mtan."),
    arch: str = typer.Option(None, "--arch", help="segnet-mtan or segnet (default: segnet-mtan when the file has "
                             "attention modules, else segnet)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing crosstask checkpoint at --out."),
) -> None:  # fmt: skip
    from crosstask_cli.reference_import import import_reference_weights

    res = import_reference_weights(weights, out_file, data, source=source, arch=arch, force=force)
    out.print(f"[green]wrote[/] [bold]{esc(res.path)}[/]: {res.arch}, tasks {', '.join(res.tasks)}, "
              f"{res.num_classes} classes, {res.parameters:,} parameters")  # fmt: skip
    if "logsigma" in res.skipped:
        values = ", ".join(f"{v:.4g}" for v in res.skipped["logsigma"].tolist())
        out.print(f"MTAN's logsigma [{values}] kept in the checkpoint's 'imported' entry (not part of the network)")
