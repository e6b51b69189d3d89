"""ONNX export of the direct predictions (the TaskTransferNets are training-time only).

The graph takes ``image``: B×3×H×W float32 normalised as the checkpoint says, and returns ``seg_logits``
(B×C×H×W) and ``depth`` (B×1×H×W, dataset units). Batch is dynamic, and so are H and W as multiples of 32
(the encoder's stride) from 64 up (torch.export specialises a size-1 dimension, so the traced example has at least
two encoder cells per side); pad other sizes before calling. Needs the optional extra: pip install "crosstask-cli[onnx]".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from crosstask_cli.errors import CheckpointError, MissingDependencyError

MISSING_ONNX = (
    "ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
    'pip install "crosstask-cli[onnx]" (or pip install onnx onnxscript onnxruntime)'
)


class DirectPredictions(nn.Module):
    """Wraps a CrossTaskNet to return its direct predictions (seg logits and/or depth, as the model has them)
    without the TaskTransferNets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = [n for n, t in (("seg_logits", "seg"), ("depth", "depth")) if t in model.config.tasks]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pred = self.model(image, direct_only=True)
        return tuple(t for t in (pred.seg, pred.depth) if t is not None)


@dataclass
class ExportResult:
    path: Path
    max_abs_diff_seg: float | None = None
    max_abs_diff_depth: float | None = None
    checked_shapes: list[tuple[int, ...]] | None = None


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(MISSING_ONNX) from exc


def export_onnx(ckpt: str | Path, onnx_path: str | Path, verify: bool = True, opset: int = 18) -> ExportResult:
    """Export a checkpoint's direct predictions to ONNX; with ``verify`` compare against PyTorch in
    onnxruntime on two batch sizes and two spatial sizes (max abs difference must stay ≤ 1e-4)."""
    from crosstask_cli.atomic import atomic_write
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    _require_onnx()
    c = load_checkpoint(ckpt)
    h, w = c["dataset"]["height"], c["dataset"]["width"]
    if h % 32 or w % 32:
        raise CheckpointError(
            f"{ckpt}: the model's input size {h}×{w} is not a multiple of 32, which the ONNX graph needs"
        )
    module = DirectPredictions(model_from_checkpoint(c, ckpt)).eval()
    eh, ew = max(h, 64), max(w, 64)
    example = torch.randn(2, 3, eh, ew)
    batch = torch.export.Dim("batch", min=1, max=1024)
    cells_h, cells_w = torch.export.Dim("h32", min=2, max=256), torch.export.Dim("w32", min=2, max=256)
    dynamic = {"image": {0: batch, 2: 32 * cells_h, 3: 32 * cells_w}}
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=["image"],
            output_names=module.names,
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    onnx_path = Path(onnx_path)
    atomic_write(onnx_path, lambda f: f.write(program.model_proto.SerializeToString()))
    result = ExportResult(onnx_path)
    if verify:
        result = verify_onnx(module, onnx_path, [(1, 3, eh, ew), (3, 3, eh + 32, ew + 64)])
    return result


def verify_onnx(module: nn.Module, onnx_path: Path, shapes: list[tuple[int, ...]], tol: float = 1e-4) -> ExportResult:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(MISSING_ONNX) from exc
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(module.names, 0.0)
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            expected = module(x)
        got = session.run(module.names, {"image": x.numpy()})
        for name, e, g in zip(module.names, expected, got, strict=True):
            worst[name] = max(worst[name], float((torch.from_numpy(g) - e).abs().max()))
    worst_seg, worst_depth = worst.get("seg_logits", 0.0), worst.get("depth", 0.0)
    if worst_seg > tol or worst_depth > tol:
        raise RuntimeError(
            f"{onnx_path}: ONNX output differs from PyTorch (seg {worst_seg:.2e}, depth {worst_depth:.2e} > {tol})"
        )
    return ExportResult(onnx_path, worst_seg, worst_depth, shapes)
