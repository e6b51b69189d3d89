"""``crosstask export``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import esc, handle_errors, out

# "\\[" keeps Rich from reading [onnx] as markup (it would vanish from --help)
HELP = """Export a checkpoint's direct predictions to ONNX (dynamic batch; height/width dynamic in multiples of
32) and verify it against PyTorch with onnxruntime. Needs: pip install "crosstask-cli\\[onnx]"."""


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
    outputs = ", ".join(f"'{n}'" for n in res.outputs)
    out.print(f"[green]exported[/] [bold]{esc(res.path)}[/] (input 'image' B×3×H×W; outputs {outputs})")
    if res.max_abs_diff:
        shapes = ", ".join("×".join(map(str, s)) for s in res.checked_shapes or [])
        diffs = ", ".join(f"{name} {v:.1e}" for name, v in res.max_abs_diff.items())
        out.print(f"verified with onnxruntime on {shapes}: max |Δ| {diffs}")
