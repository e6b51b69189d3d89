"""Depth: predictions and targets B×1×H×W in the dataset's depth units (``inverse`` or ``metric``), 0 = invalid
in targets.

Losses as the original method: ``--lp`` (l1, mse, logl1, smoothl1) averaged over each image's valid pixels, then
over the batch; a depth transferred from another task is trained against the detached direct depth with l1 or
SSIM (``--tdep-loss``), or with the ``--lp`` loss against the ground truth (``xtc``). A TaskTransferNet fed by
depth reads the map itself. Metrics: abs, rel, sq rel, RMSE, RMSE log, iRMSE, δ1–3, pooled over valid pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crosstask_cli.options import HyperParameter
from crosstask_cli.tasks.base import TaskContext, TaskMetrics, TaskSpec, first_bad, protocols_of

if TYPE_CHECKING:
    pass

DEPTH_LOSSES = ("l1", "mse", "logl1", "smoothl1")
TDEPTH_LOSSES = ("l1", "ssim")


class DepthTaskMetrics(TaskMetrics):
    """Pooled depth errors (:class:`~crosstask_cli.metrics.DepthMetrics`, the ``standard`` protocol); for the
    ``original`` protocol abs/rel per batch, averaged weighted by batch size (built from the same per-batch sums,
    in ``original``, which may be shared with the segmentation metrics of the same evaluation)."""

    def __init__(self, protocols=("standard",), original=None, depth_kind: str = "metric") -> None:
        from crosstask_cli.metrics import DepthMetrics, OriginalProtocolMetrics

        self.protocols = protocols_of(protocols)
        self.depth_kind = depth_kind
        self.pooled = DepthMetrics()
        self.original = None
        if "original" in self.protocols:
            self.original = original or OriginalProtocolMetrics(1)

    def update(self, pred, target) -> None:
        sums = self.pooled.update(pred, target)
        if self.original is not None:
            self.original.add_depth_sums(sums, target.shape[0])

    def compute(self, protocol: str | None = None) -> dict[str, Any]:
        if self._protocol(protocol) == "original":
            o = self.original.compute()
            return {"abs_err": o["abs_err"], "rel_err": o["rel_err"]}
        values = self.pooled.compute()
        if self.depth_kind == "inverse":  # 1/p − 1/t of inverse depth is a depth error, unbounded as p → 0
            del values["irmse"]
        return values

    def state(self):
        parts = [self.pooled.sums]
        if self.original is not None:
            parts.append(self.original.sums[3:6])
        return parts

    def load_state(self, tensors) -> None:
        self.pooled.sums = tensors[0].clone()
        if self.original is not None:
            o = self.original
            o.sums = o.sums.to(tensors[1].device)
            o.sums[3:6] = tensors[1]


class DepthTask(TaskSpec):
    name = "depth"
    title = "depth"
    result_key = "depth"
    onnx_output = "depth"
    array = "depth"
    dtype = "float32"
    file_dtypes = ("float32",)
    invalid = 0
    options = (
        HyperParameter("lp", "l1", "Direct depth loss: l1 (default), mse, logl1, smoothl1.", choices=DEPTH_LOSSES),
        HyperParameter(
            "tdep_loss",
            "l1",
            "Transferred depth loss against the detached direct depth: l1 (default) or ssim.",
            choices=TDEPTH_LOSSES,
        ),
    )
    direct_option = "lp"
    transfer_option = "tdep_loss"
    directions = {
        "abs_err": -1, "rel_err": -1, "sq_rel": -1, "rmse": -1, "rmse_log": -1, "irmse": -1,
        "delta1": +1, "delta2": +1, "delta3": +1,
    }  # fmt: skip
    titles = {"abs_err": "abs err", "rel_err": "abs rel", "rmse": "RMSE", "delta1": "δ1"}
    report_titles = {
        "abs_err": "abs err", "rel_err": "abs rel err", "sq_rel": "sq rel err", "rmse": "RMSE", "rmse_log": "RMSE log",
        "irmse": "iRMSE (reciprocal units)", "delta1": "δ < 1.25", "delta2": "δ < 1.25²", "delta3": "δ < 1.25³",
    }  # fmt: skip
    agreement_title = "depth gap |direct − transferred|"
    compared = ("abs_err", "rel_err")
    logged = ("abs_err", "rel_err", "rmse", "delta1")
    agreement = "depth_gap"
    image_error = "abs_err"
    pixel_error = "abs_err"
    energy_over_valid = True  # per-image energy over the valid-depth pixels, those its error covers

    def channels(self, ctx: TaskContext) -> int:
        return 1

    def target_tensor(self, array):
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(0)

    def valid(self, target, ctx):
        return (target > 0).squeeze(1)

    def rescale(self, array, scale, ctx):
        import numpy as np

        out = array / scale if ctx.depth_kind == "metric" else array * scale
        return out.astype(np.float32)

    def check_array(self, array, ctx):
        import numpy as np

        bad = ~np.isfinite(array) | (array < 0)
        if bad.any():
            i = first_bad(bad)
            wrong = array[bad]
            what = "NaN" if np.isnan(wrong).any() else "inf" if np.isinf(wrong).any() else "negative values"
            return i, f"holds {what}; depth must be finite and ≥ 0 (0 = invalid)"
        return None

    def loss(self, pred, target, kind=None, ctx=None):
        from crosstask_cli.losses import masked_depth_loss

        return masked_depth_loss(pred.float(), target, target > 0, kind or "l1")

    def transferred_loss(self, transferred, direct, target, consistency, options=None, ctx=None):
        from crosstask_cli.losses import masked_depth_loss, ssim_loss

        valid = target > 0
        if consistency == "xtc":  # as the original's xtc: the direct depth loss against the ground truth
            return masked_depth_loss(transferred.float(), target, valid, self.option_value(options, "lp"))
        if self.option_value(options, "tdep_loss") == "l1":
            return masked_depth_loss(transferred.float(), direct.detach().float(), valid, "l1")
        return ssim_loss(transferred.float(), direct.detach().float(), valid)

    def metrics(self, protocol="standard", ctx=None, original=None) -> DepthTaskMetrics:
        """iRMSE is reported for metric depth only: on inverse depth (Cityscapes' disparity) the reciprocal is
        depth itself, and a prediction near 0 (sky, far away) makes it explode (e.g. 23,213,069)."""
        return DepthTaskMetrics(protocol, original, ctx.depth_kind if ctx is not None else "metric")

    def agreement_sums(self, direct, transferred, target, ctx):
        import torch

        valid = target.reshape(direct.shape) > 0
        gap = ((direct - transferred).abs() * valid).double().sum()
        return torch.stack([gap, valid.sum().double()])

    def energy(self, direct, transferred):
        return (direct.float() - transferred.float()).abs().squeeze(1)

    def as_array(self, pred):
        return pred[0].detach().float().clamp(min=0).cpu().numpy()

    def pixel_errors(self, pred, target, ctx):
        shape = (pred.shape[0], *pred.shape[2:])
        return (pred.float().reshape(shape) - target.reshape(shape)).abs()

    def image_errors(self, pred, target, ctx):
        import torch

        err = self.pixel_errors(pred, target, ctx)
        valid = target.reshape(err.shape) > 0
        count = valid.flatten(1).sum(1)
        return torch.where(count > 0, (err * valid).flatten(1).sum(1) / count.clamp(min=1), torch.nan)

    def file_suffixes(self, tag=""):
        return (f"_depth{tag}.npy", f"_depth{tag}_color.png")

    def full_size(self, pred, size):
        from crosstask_cli.ops import upsampled_map

        return upsampled_map(pred[0], size)

    def encode(self, array, ctx, tag="", dtype=None):
        import numpy as np

        from crosstask_cli.predictions import encode_depth

        return encode_depth(array.astype(np.float32, copy=False), ctx.depth_kind, tag)

    def read_prediction(self, path, height=None, width=None):
        from crosstask_cli.predictions import read_depth, read_depth_prediction

        if height is None:
            return read_depth(path)
        return read_depth_prediction(path, height, width)

    def colorize(self, array, ctx, vrange=None, mark_invalid: bool = True):
        from crosstask_cli.colormaps import colorize_depth

        return colorize_depth(array, ctx.depth_kind, vrange, mark_invalid=mark_invalid)
