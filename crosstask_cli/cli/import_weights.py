"""``crosstask import-weights``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import esc, handle_errors, out

HELP = """Turn a reference implementation's saved weights into a crosstask checkpoint that eval, predict, export and
info accept. --source mtan: a state dict saved from MTAN's published SegNet code (SegNet-MTAN or the split SegNet,
seg+depth or seg+depth+normal; MTAN's task order); MTAN's logsigma (uncertainty weighting) is kept in the
checkpoint's 'imported' entry. --source adamt-net: a state dict saved from the original cross-task project's
AdaMT-Net (2 or 3 tasks); its per-batch-position attention maps become one map shared by every sample (the position
chosen by --attention-position, default 0: the original's output for a batch of one), and the 3-task network's
1-channel normal head is not loaded (said, and kept in 'imported'). The checkpoint is described with the dataset
given by --data (its classes must be the weights'); by default the model takes crosstask's images as unnormalised
RGB in [0, 1], as MTAN's data (--input-space)."""


@handle_errors
def import_weights_command(
    weights: Path = typer.Argument(..., help="The reference's saved state dict (.pth/.pt; weights only)."),
    out_file: Path = typer.Option(..., "--out", help="The crosstask checkpoint to write (.pt)."),
    data: Path = typer.Option(..., "--data", help="The dataset the weights were trained on: prepared, or MTAN's "
                              "preprocessed layout (prepared at the dataset's size, as eval does)."),
    source: str = typer.Option("mtan", "--source", help="Where the weights come from: mtan or adamt-net."),
    arch: str = typer.Option(None, "--arch", help="mtan: segnet-mtan or segnet (default: segnet-mtan when the file "
                             "has attention modules, else segnet); adamt-net weights make an adamt-net model."),
    input_space: str = typer.Option("unit", "--input-space", help="What the weights were trained on: unit (RGB in "
                                    "[0, 1], MTAN's preprocessed data; default) or imagenet (ImageNet-normalised)."),
    attention_position: int = typer.Option(0, "--attention-position", min=0, help="adamt-net: the batch position "
                                           "whose attention maps every sample gets (0: a batch of one)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing crosstask checkpoint at --out."),
) -> None:  # fmt: skip
    from crosstask_cli.reference_import import import_reference_weights

    res = import_reference_weights(weights, out_file, data, source=source, arch=arch, force=force,
                                   input_space=input_space, attention_position=attention_position)  # fmt: skip
    out.print(f"[green]wrote[/] [bold]{esc(res.path)}[/]: {res.arch}, tasks {', '.join(res.tasks)}, "
              f"{res.num_classes} classes, {res.parameters:,} parameters")  # fmt: skip
    if "logsigma" in res.skipped:
        values = ", ".join(f"{v:.4g}" for v in res.skipped["logsigma"].tolist())
        out.print(f"MTAN's logsigma [{values}] kept in the checkpoint's 'imported' entry (not part of the network)")
    if "attention_positions" in res.skipped:
        out.print(f"AdaMT-Net's attention maps: position {attention_position} of {res.skipped['attention_positions']} "
                  "taken for every sample")  # fmt: skip
    if "normal_head_not_loaded" in res.skipped:
        out.print(f"[yellow]warning:[/] {esc(res.skipped['normal_head_not_loaded'])}")
