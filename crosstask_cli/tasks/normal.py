"""Surface normals: predictions and targets B×3×H×W unit vectors in the camera frame, in NYUv2's convention (x to
the right, y down, z towards the camera: a surface facing the camera is (0, 0, 1), a floor seen from above
(0, −1, ·)); the zero vector marks an invalid target pixel.

The head (and a TaskTransferNet predicting normals) L2-normalises its 3 channels per pixel, as MTAN. A
TaskTransferNet fed by normals reads the 3-vector. Losses: ``cos`` = 1 − the mean cosine over the valid pixels of
the batch (MTAN's definition, the default) or ``l1`` (mean of Σ|p − t| over them), for the direct prediction
(``--normal-loss``) and for one transferred into normals (``--tnormal-loss``, against the detached direct
normals). Metrics: mean and median angular error (degrees) and the shares within 11.25°, 22.5° and 30°.

Prepared arrays are N×H×W×3 float32 (``normals.npy``); resizing takes the nearest pixel centre, so a vector keeps
its unit length and the zero marker of invalid pixels stays exact (bilinear blending would mix invalid zeros into
the border vectors, shortening them to no direction). A horizontal flip mirrors the scene: x changes sign.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crosstask_cli.options import HyperParameter
from crosstask_cli.tasks.base import TaskContext, TaskMetrics, TaskSpec, first_bad, protocols_of

if TYPE_CHECKING:
    import torch

NORMAL_LOSSES = ("cos", "l1")
UNIT_TOLERANCE = 1e-3  # how far from 1 a stored normal's length may be


def unit(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x divided by its L2 norm over ``dim`` (a zero vector stays zero)."""
    import torch.nn.functional as F

    return F.normalize(x, p=2.0, dim=dim, eps=1e-12)


class NormalTaskMetrics(TaskMetrics):
    """:class:`~crosstask_cli.metrics.NormalMetrics` (``standard``: pooled over the split, exact median) and/or
    :class:`~crosstask_cli.metrics.NormalOriginalMetrics` (``original``: MTAN's per-batch means and medians,
    averaged over batches)."""

    def __init__(self, protocols=("standard",)) -> None:
        from crosstask_cli.metrics import NormalMetrics, NormalOriginalMetrics

        self.protocols = protocols_of(protocols)
        self.pooled = NormalMetrics() if "standard" in self.protocols else None
        self.per_batch = NormalOriginalMetrics() if "original" in self.protocols else None

    def update(self, pred, target) -> None:
        for accumulator in (self.pooled, self.per_batch):
            if accumulator is not None:
                accumulator.update(pred, target)

    def compute(self, protocol: str | None = None) -> dict[str, Any]:
        if self._protocol(protocol) == "original":
            return self.per_batch.compute()
        return self.pooled.compute()

    def state(self):
        parts = []
        if self.pooled is not None:
            parts += [self.pooled.sums, self.pooled.hist.double()]
        if self.per_batch is not None:
            parts.append(self.per_batch.sums)
        return parts

    def load_state(self, tensors) -> None:
        tensors = list(tensors)
        if self.pooled is not None:
            self.pooled.sums, self.pooled.hist = tensors[0].clone(), tensors[1].round().long()
            tensors = tensors[2:]
        if self.per_batch is not None:
            self.per_batch.sums = tensors[0].clone()


class NormalTask(TaskSpec):
    name = "normal"
    title = "surface normals"
    result_key = "normal"
    onnx_output = "normal"
    array = "normals"
    array_channels = 3
    dtype = "float32"
    invalid = [0, 0, 0]
    options = (
        HyperParameter(
            "normal_loss",
            "cos",
            "Direct normal loss: cos (default; 1 − mean cosine over valid pixels, as MTAN) or l1.",
            choices=NORMAL_LOSSES,
        ),  # fmt: skip
        HyperParameter(
            "tnormal_loss",
            "cos",
            "Transferred normal loss against the detached direct normals: cos (default) or l1.",
            choices=NORMAL_LOSSES,
        ),  # fmt: skip
    )
    direct_option = "normal_loss"
    transfer_option = "tnormal_loss"
    directions = {"mean_angle": -1, "median_angle": -1, "within_11_25": +1, "within_22_5": +1, "within_30": +1}
    titles = {"mean_angle": "mean °", "median_angle": "median °", "within_11_25": "< 11.25°", "within_22_5": "< 22.5°",
              "within_30": "< 30°"}  # fmt: skip
    report_titles = {
        "mean_angle": "mean angle error (°)", "median_angle": "median angle error (°)", "within_11_25": "within 11.25°",
        "within_22_5": "within 22.5°", "within_30": "within 30°",
    }  # fmt: skip
    agreement_title = "normal gap (mean angle direct vs transferred, °)"
    compared = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
    logged = ("mean_angle", "median_angle", "within_11_25")
    agreement = "normal_gap"
    image_error = "mean_angle"
    pixel_error = "angle"
    transfer_output = "l2"
    file_dtypes = ("float32", "float16")
    energy_over_valid = True

    def channels(self, ctx: TaskContext) -> int:
        return 3

    def activate(self, raw):
        return unit(raw)

    def target_tensor(self, array):
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))

    def valid(self, target, ctx=None):
        return (target != 0).any(1)

    def flip(self, array):
        out = array[:, ::-1].copy()
        out[..., 0] *= -1  # the mirrored scene's normals point the other way horizontally
        return out

    def check_array(self, array, ctx):
        import numpy as np

        finite = np.isfinite(array).all(-1)
        if not finite.all():
            return first_bad(~finite), "holds NaN or inf; normals must be finite unit vectors (zero vector = invalid)"
        norm = np.sqrt(np.square(array.astype(np.float64)).sum(-1))
        bad = (norm != 0) & (np.abs(norm - 1) > UNIT_TOLERANCE)
        if bad.any():
            i = first_bad(bad)
            length = float(norm[i][bad[i]].flat[0])
            return i, f"holds a vector of length {length:.4g}; normals must be unit vectors (zero vector = invalid)"
        return None

    def loss(self, pred, target, kind=None, ctx=None):
        from crosstask_cli.losses import masked_normal_loss

        return masked_normal_loss(pred.float(), target, self.valid(target), kind or "cos")

    def transferred_loss(self, transferred, direct, target, consistency, options=None, ctx=None):
        from crosstask_cli.losses import masked_normal_loss

        valid = self.valid(target)
        if consistency == "xtc":
            return masked_normal_loss(transferred.float(), target, valid, self.option_value(options, "normal_loss"))
        kind = self.option_value(options, "tnormal_loss")
        return masked_normal_loss(transferred.float(), direct.detach().float(), valid, kind)

    def metrics(self, protocol="standard", ctx=None, original=None) -> NormalTaskMetrics:
        return NormalTaskMetrics(protocol)

    def agreement_sums(self, direct, transferred, target, ctx):
        import torch

        from crosstask_cli.metrics import normal_angles

        angle, _ = normal_angles(direct, transferred)
        valid = self.valid(target)
        return torch.stack([(angle * valid).double().sum(), valid.sum().double()])

    def energy(self, direct, transferred):
        return (1 - (direct.float() * transferred.float()).sum(1)).clamp(min=0)

    def pixel_errors(self, pred, target, ctx):
        from crosstask_cli.metrics import normal_angles

        return normal_angles(pred, target)[0]

    def image_errors(self, pred, target, ctx):
        import torch

        from crosstask_cli.metrics import normal_angles

        angle, valid = normal_angles(pred, target)
        count = valid.flatten(1).sum(1)
        return torch.where(count > 0, (angle * valid).flatten(1).sum(1) / count.clamp(min=1), torch.nan)

    def file_suffixes(self, tag=""):
        return (f"_normal{tag}.npy", f"_normal{tag}_color.png")

    def full_size(self, pred, size):
        """3×h×w → H×W×3 float32 unit vectors: bilinear (half-pixel centres, as the other tasks), renormalised."""
        import torch.nn.functional as F

        up = F.interpolate(pred[None].float(), size=size, mode="bilinear", align_corners=False)
        return unit(up)[0].permute(1, 2, 0).cpu().numpy()

    def encode(self, array, ctx, tag="", dtype=None):
        import io

        import numpy as np

        from crosstask_cli.images import encode_png

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array, dtype=dtype or self.file_dtypes[0]), allow_pickle=False)
        suffix_npy, suffix_png = self.file_suffixes(tag)
        return {suffix_npy: buf.getvalue(), suffix_png: encode_png(self.colorize(array, ctx))}

    def read_prediction(self, path, height=None, width=None):
        """A ``*_normal.npy`` (H×W×3, or 3×H×W; any float dtype) → float32 H×W×3 with every non-zero vector scaled
        to unit length (a float16 file, or another tool's, is a direction to within rounding; the angle metrics take
        p·t as the cosine, where a length of 1 − 3e-4 alone would read as 1.4°), at height×width (nearest pixel
        centres) when given."""
        import numpy as np

        from crosstask_cli.data.resize import resize_nearest
        from crosstask_cli.errors import DatasetError, InputError

        try:
            normal = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc
        if normal.ndim == 3 and normal.shape[0] == 3 and normal.shape[-1] != 3:
            normal = np.moveaxis(normal, 0, -1)
        if normal.ndim != 3 or normal.shape[-1] != 3:
            raise DatasetError(f"{path}: expected an H×W×3 normal array, got shape {normal.shape}")
        finite = np.isfinite(normal)
        if not finite.all():
            raise InputError(f"{path}: {int((~finite).sum())} normal value(s) are NaN or infinite")
        wide = normal.astype(np.float64)
        length = np.linalg.norm(wide, axis=-1, keepdims=True)
        normal = np.where(length > 0, wide / np.where(length > 0, length, 1), 0).astype(np.float32)
        return normal if height is None else resize_nearest(normal, height, width)

    def colorize(self, array, ctx=None, vrange=None):
        """H×W×3 normals → RGB = (n + 1)/2 (x → red, y → green, z → blue); invalid (zero) pixels dark grey."""
        import numpy as np

        from crosstask_cli.colormaps import INVALID_RGB

        rgb = (np.clip((array + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8)
        rgb[~(array != 0).any(-1)] = INVALID_RGB
        return rgb
