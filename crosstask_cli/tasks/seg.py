"""Semantic segmentation: logits B×C×H×W, targets B×H×W class ids (``ignore_index``, 255 by default, = unlabelled).

Losses as the original method: cross-entropy over the labelled pixels; a segmentation transferred from another
task is trained against the argmax of the detached direct segmentation (``--tseg-loss ce|kl|soft-kl``, label
smoothing ε, summed over the labelled pixels and divided by every pixel of the batch), or with plain
cross-entropy against the ground truth (``xtc``). A TaskTransferNet fed by segmentation reads its
log-probabilities; one predicting it returns log-probabilities. Metrics: mIoU, pixel accuracy, per-class IoU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crosstask_cli.options import HyperParameter
from crosstask_cli.tasks.base import TaskContext, TaskMetrics, TaskSpec, first_bad, protocols_of

if TYPE_CHECKING:
    import numpy as np
    import torch

TSEG_LOSSES = ("ce", "kl", "soft-kl")


class SegmentationMetrics(TaskMetrics):
    """The confusion matrix (both protocols report its per-class IoU; ``standard`` its mIoU and pixel accuracy)
    and, for the ``original`` protocol, the per-image averages of
    :class:`~crosstask_cli.metrics.OriginalProtocolMetrics` (``original``, which may be shared with the depth
    metrics of the same evaluation)."""

    def __init__(self, ctx: TaskContext, protocols=("standard",), original=None) -> None:
        from crosstask_cli.metrics import ConfusionMatrix, OriginalProtocolMetrics

        self.ctx, self.protocols = ctx, protocols_of(protocols)
        self.cm = ConfusionMatrix(ctx.num_classes, ctx.ignore_index, list(ctx.class_names) or None)
        self.original = None
        if "original" in self.protocols:
            self.original = original or OriginalProtocolMetrics(ctx.num_classes, ctx.ignore_index)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        from crosstask_cli.ops import class_labels

        if self.original is not None:
            if pred.ndim == target.ndim + 1:
                pred = class_labels(pred)  # once for both accumulators
            self.original._update_seg(pred, target)
        self.cm.update(pred, target)  # from logits it needs no range clamp

    def compute(self, protocol: str | None = None) -> dict[str, Any]:
        protocol = self._protocol(protocol)
        seg = self.cm.compute()
        if protocol == "original":
            o = self.original.compute()
            seg = {**seg, "miou": o["miou"], "pixel_acc": o["pixel_acc"]}
        return seg

    def state(self) -> list[torch.Tensor]:
        import torch

        self.cm.check_targets()
        parts = [self.cm.matrix.double(), self.cm.misses.double()]
        if self.original is not None:
            o = self.original
            parts += [o.sums[:3], torch.tensor([float(o.images)], dtype=torch.float64, device=o.sums.device)]
        return parts

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.cm.matrix = tensors[0].round().long().view_as(self.cm.matrix)
        self.cm.misses = tensors[1].round().long()
        if self.original is not None:
            o = self.original
            o.sums = o.sums.to(tensors[2].device)
            o.sums[:3] = tensors[2]
            o.images = int(tensors[3].item())


class SegmentationTask(TaskSpec):
    name = "seg"
    title = "segmentation"
    result_key = "segmentation"
    onnx_output = "seg_logits"
    array = "labels"
    dtype = "uint8"
    invalid = 255
    options = (
        HyperParameter(
            "label_smoothing", 0.0, "Label smoothing ε of the transferred-segmentation loss (0).", low=0.0, high=1.0
        ),  # fmt: skip
        HyperParameter(
            "tseg_loss",
            "ce",
            "Transferred segmentation loss against the argmax of the detached direct seg: ce (default; label-smoothed "
            "cross-entropy) or kl (KL from the smoothed one-hot, the original's definition); soft-kl distils the "
            "direct softmax instead (an extension). All are summed over labelled pixels and divided by all pixels, as "
            "the original.",
            choices=TSEG_LOSSES,
        ),
    )
    direct_option = None  # cross-entropy only
    transfer_option = "tseg_loss"
    directions = {"miou": +1, "pixel_acc": +1}
    titles = {"miou": "mIoU", "pixel_acc": "pix acc"}
    report_titles = {"miou": "mIoU", "pixel_acc": "pixel accuracy"}
    agreement_title = "seg agreement (share of pixels with the same class)"
    compared = ("miou", "pixel_acc")
    logged = ("miou", "pixel_acc")
    agreement = "seg_agreement"
    image_error = "1_minus_miou"
    pixel_error = "seg_error"
    transfer_input = "log_softmax"
    transfer_output = "log_softmax"
    energy_over_valid = False  # per-image energy: the mean over all pixels

    def channels(self, ctx: TaskContext) -> int:
        return ctx.num_classes

    def target_tensor(self, array: np.ndarray) -> torch.Tensor:
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).long()

    def valid(self, target: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        return target != ctx.ignore_index

    def check_array(self, array: np.ndarray, ctx: TaskContext) -> str | None:
        import numpy as np

        bad = (array >= ctx.num_classes) & (array != ctx.ignore_index)
        if bad.any():
            i = first_bad(bad)
            values = sorted(set(np.unique(array[i][bad[i]]).tolist()))[:5]
            return i, f"holds class id(s) {values}, expected 0..{ctx.num_classes - 1} or {ctx.ignore_index} (ignore)"
        return None

    def _labelled(self, target: torch.Tensor, ctx: TaskContext | None):
        import torch

        ignore = ctx.ignore_index if ctx is not None else 255
        labelled = target != ignore
        return labelled, torch.where(labelled, target, torch.zeros_like(target))

    def loss(self, pred, target, kind=None, ctx=None):
        import torch.nn.functional as F

        from crosstask_cli.losses import smoothed_cross_entropy

        labelled, safe = self._labelled(target, ctx)
        return smoothed_cross_entropy(F.log_softmax(pred.float(), dim=1), safe, 0.0, labelled)

    def transferred_loss(self, transferred, direct, target, consistency, options=None, ctx=None):
        import torch.nn.functional as F

        from crosstask_cli.losses import _reduce, smoothed_cross_entropy, smoothed_one_hot_kl
        from crosstask_cli.ops import class_labels

        labelled, safe = self._labelled(target, ctx)
        log_q = F.log_softmax(transferred.float(), dim=1)
        if consistency == "xtc":  # as the original's xtc: plain cross-entropy against the ground truth
            return smoothed_cross_entropy(log_q, safe, 0.0, labelled)
        kind = self.option_value(options, "tseg_loss")
        if kind == "soft-kl":
            log_p = F.log_softmax(direct.detach().float(), dim=1)
            return _reduce((log_p.exp() * (log_p - log_q)).sum(1), labelled, "all")
        labels = class_labels(direct.detach().float())
        loss = smoothed_cross_entropy if kind == "ce" else smoothed_one_hot_kl
        return loss(log_q, labels, self.option_value(options, "label_smoothing"), labelled, "all")

    def metrics(self, protocol="standard", ctx=None, original=None) -> SegmentationMetrics:
        if ctx is None or ctx.num_classes < 1:
            raise ValueError("segmentation metrics need the number of classes: pass ctx=TaskContext(num_classes=…)")
        return SegmentationMetrics(ctx, protocol, original)

    def agreement_sums(self, direct, transferred, target, ctx):
        import torch

        from crosstask_cli.ops import class_labels

        labelled = target != ctx.ignore_index
        agree = (class_labels(direct) == class_labels(transferred)) & labelled
        return torch.stack([agree.sum().double(), labelled.sum().double()])

    def energy(self, direct, transferred):
        import torch.nn.functional as F

        log_p = F.log_softmax(direct.float(), dim=1)
        log_q = F.log_softmax(transferred.float(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(1).clamp(min=0)  # ≥ 0 in exact arithmetic; rounding can dip below

    def _image_miou(self, pred, target, ctx):
        import torch

        from crosstask_cli.metrics import per_image_scores
        from crosstask_cli.ops import class_labels

        labels = class_labels(pred) if pred.ndim == target.ndim + 1 else pred
        miou, _, count = per_image_scores(labels, target, ctx.num_classes, ctx.ignore_index)
        return torch.where(count > 0, miou, torch.nan)

    def image_scores(self, pred, target, ctx):
        return self._image_miou(pred, target, ctx)

    def image_errors(self, pred, target, ctx):
        return 1 - self._image_miou(pred, target, ctx)

    def error_of_score(self, score):
        return 1 - score

    def as_array(self, pred):
        import torch

        from crosstask_cli.ops import class_labels

        return class_labels(pred[None].float())[0].to(torch.uint8).cpu().numpy()

    def pixel_errors(self, pred, target, ctx):
        from crosstask_cli.ops import class_labels

        labels = class_labels(pred) if pred.ndim == target.ndim + 1 else pred
        return (labels != target).float()

    def file_suffixes(self, tag=""):
        return (f"_seg{tag}.png", f"_seg{tag}_color.png")

    def full_size(self, pred, size):
        from crosstask_cli.ops import upsampled_class_ids

        return upsampled_class_ids(pred, size)

    def encode(self, array, ctx, tag="", dtype=None):
        from crosstask_cli.predictions import encode_seg

        return encode_seg(array, [tuple(c) for c in ctx.palette], tag)

    def read_prediction(self, path, height=None, width=None):
        from crosstask_cli.predictions import read_seg, read_seg_prediction

        if height is None:
            return read_seg(path)
        return read_seg_prediction(path, "crosstask", None, height, width)

    def colorize(self, array, ctx, vrange=None):
        from crosstask_cli.data.labels import colorize

        return colorize(array, [tuple(c) for c in ctx.palette])
