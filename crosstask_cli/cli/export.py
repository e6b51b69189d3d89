"""``crosstask export``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import esc, handle_errors, out

HELP = """Export a checkpoint's direct predictions to ONNX (dynamic batch; height/width dynamic in multiples of
32) and verify it against PyTorch with onnxruntime. Needs: pip install "crosstask-cli[onnx]"."""


@handle_errors
def export_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint to export."),
    onnx_file: Path = typer.Option(..., "--onnx", help="Output .onnx file."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Compare ONNX Runtime against PyTorch (max abs diff ≤ 1e-4)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    from crosstask_cli.cli.common import CLIError
    from crosstask_cli.outputs import check_output_file

    check_output_file(onnx_file, "--onnx", {"--ckpt": ckpt})
    if onnx_file.exists() and not force:
        raise CLIError(f"{onnx_file} already exists; pass --force to overwrite it")
    from crosstask_cli.export import export_onnx

    res = export_onnx(ckpt, onnx_file, verify=verify)
    out.print(f"[green]exported[/] [bold]{esc(res.path)}[/] (inputs 'image' B×3×H×W; outputs 'seg_logits', 'depth')")
    if res.max_abs_diff_seg is not None:
        shapes = ", ".join("×".join(map(str, s)) for s in res.checked_shapes or [])
        out.print(
            f"verified with onnxruntime on {shapes}: max |Δ| seg {res.max_abs_diff_seg:.1e}, depth {res.max_abs_diff_depth:.1e}"
        )
