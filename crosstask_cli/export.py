"""ONNX export of the direct predictions (the TaskTransferNets are training-time only).

The graph takes ``image``: B×3×H×W float32 normalised as the checkpoint says, and returns one output per task,
named by the task's spec: ``seg_logits`` (B×C×H×W), ``depth`` (B×1×H×W, dataset units), ``normal`` (B×3×H×W unit
vectors), in the order of the tasks. Batch is dynamic, and so are H and W as multiples of 32
(the encoder's stride) from 64 up (torch.export specialises a size-1 dimension, so the traced example has at least
two encoder cells per side); pad other sizes before calling. Needs the optional extra: pip install "crosstask-cli[onnx]".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from crosstask_cli.errors import CheckpointError, MissingDependencyError

MISSING_ONNX = (
    "ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
    'pip install "crosstask-cli[onnx]" (or pip install onnx onnxscript onnxruntime)'
)


class DirectPredictions(nn.Module):
    """Wraps a CrossTaskNet to return its direct predictions (one tensor per task, in registry order) without the
    TaskTransferNets; ``names`` are the outputs' names."""

    def __init__(self, model: nn.Module) -> None:
        from crosstask_cli.tasks import get_task, ordered

        super().__init__()
        self.model = model
        self.tasks = ordered(model.config.tasks)
        self.names = [get_task(t).onnx_output for t in self.tasks]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pred = self.model(image, direct_only=True)
        return tuple(pred.direct[t] for t in self.tasks)


@dataclass
class ExportResult:
    """Where the graph went and, verified, the largest |ONNX − PyTorch| of each output (``max_abs_diff``: output
    name → value; ``max_abs_diff_seg``/``_depth`` for those two)."""

    path: Path
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    checked_shapes: list[tuple[int, ...]] | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def max_abs_diff_seg(self) -> float | None:
        return self.max_abs_diff.get("seg_logits")

    @property
    def max_abs_diff_depth(self) -> float | None:
        return self.max_abs_diff.get("depth")


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
    result = ExportResult(onnx_path, outputs=list(module.names))
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
    bad = {name: v for name, v in worst.items() if not v <= tol}
    if bad:
        diffs = ", ".join(f"{name} {v:.2e}" for name, v in worst.items())
        raise RuntimeError(f"{onnx_path}: ONNX output differs from PyTorch ({diffs}; tolerance {tol})")
    return ExportResult(onnx_path, worst, shapes, list(module.names))
