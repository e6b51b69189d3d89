"""CrossTaskNet: shared ResNet encoder, one decoder per task and a TaskTransferNet per pair of tasks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.decoder import SkipDecoder
from crosstask_cli.models.encoder import ResNetEncoder
from crosstask_cli.models.transfer_net import TaskTransferNet

SIZE_MULTIPLE = 32  # total stride of the encoder


class Predictions:
    """Outputs of a CrossTaskNet, keyed by task.

    ``direct[task]``: the task's prediction (seg: B×C×H×W logits; depth: B×1×H×W, dataset units; normal:
    B×3×H×W unit vectors); ``transferred[(source, target)]``: the prediction of ``target`` made by the
    TaskTransferNet fed by ``source``'s prediction (segmentation as log-probabilities). ``transferred`` is empty for
    a ``direct_only`` forward and for models without TaskTransferNets.

    The original method's four fields stay readable (``seg``, ``depth``, ``seg_from_depth``,
    ``depth_from_seg``; None when absent) and ``Predictions(seg, depth, seg_from_depth, depth_from_seg)`` builds
    one from them. Iterating yields every tensor: the direct ones, then the transferred ones by target task (for
    seg and depth the original's order: seg, depth, seg_from_depth, depth_from_seg).
    """

    __slots__ = ("direct", "transferred")

    def __init__(
        self,
        seg: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        seg_from_depth: torch.Tensor | None = None,
        depth_from_seg: torch.Tensor | None = None,
        *,
        direct: dict[str, torch.Tensor] | None = None,
        transferred: dict[tuple[str, str], torch.Tensor] | None = None,
    ) -> None:
        self.direct: dict[str, torch.Tensor] = {}
        for name, t in (("seg", seg), ("depth", depth)):
            if t is not None:
                self.direct[name] = t
        self.direct.update(direct or {})
        self.transferred: dict[tuple[str, str], torch.Tensor] = {}
        for pair, t in ((("seg", "depth"), depth_from_seg), (("depth", "seg"), seg_from_depth)):
            if t is not None:
                self.transferred[pair] = t
        self.transferred.update(transferred or {})

    @property
    def seg(self) -> torch.Tensor | None:
        return self.direct.get("seg")

    @property
    def depth(self) -> torch.Tensor | None:
        return self.direct.get("depth")

    @property
    def seg_from_depth(self) -> torch.Tensor | None:
        return self.transferred.get(("depth", "seg"))

    @property
    def depth_from_seg(self) -> torch.Tensor | None:
        return self.transferred.get(("seg", "depth"))

    def __iter__(self):
        from crosstask_cli.tasks import transfer_order

        yield from self.direct.values()
        for pair in transfer_order(self.transferred):
            yield self.transferred[pair]

    def map(self, fn) -> Predictions:
        """The same predictions with ``fn`` applied to every tensor (e.g. ``lambda t: t.float()``)."""
        return Predictions(direct={k: fn(v) for k, v in self.direct.items()},
                           transferred={k: fn(v) for k, v in self.transferred.items()})  # fmt: skip

    def __repr__(self) -> str:
        shapes = {**{k: tuple(v.shape) for k, v in self.direct.items()},
                  **{f"{s}->{t}": tuple(v.shape) for (s, t), v in self.transferred.items()}}  # fmt: skip
        return f"Predictions({shapes})"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a CrossTaskNet (stored in checkpoints as ``model_config``).

    ``tasks``: the trained tasks (registry names); ``transfer_pairs``: the TaskTransferNets as (source, target)
    pairs, None = every ordered pair of the tasks (for seg and depth the original's two); ``transfer`` False
    builds none (plain multi-task learning)."""

    enc_layers: int = 34
    num_classes: int = 7
    ttnet_batch_norm: bool = False
    wider_ttnet: bool = False
    tasks: tuple[str, ...] = ("seg", "depth")
    transfer: bool = True  # the TaskTransferNets (cross-task consistency); needs two tasks
    # Bilinear ×2 of the decoders as the original (True). Checkpoints of crosstask 0.1.0 lack this key and were
    # trained with False: loading them keeps their function (engine.checkpoint.model_from_checkpoint).
    decoder_align_corners: bool = True
    transfer_pairs: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        from crosstask_cli.tasks import parse_pairs, parse_tasks

        try:
            tasks = parse_tasks(self.tasks, "tasks")
        except ConfigError as exc:
            raise ConfigError(f"model tasks: {exc}") from None
        object.__setattr__(self, "tasks", tasks)
        if self.transfer_pairs is not None:
            pairs = parse_pairs([tuple(p) for p in self.transfer_pairs], tasks, "transfer_pairs")
            object.__setattr__(self, "transfer_pairs", pairs)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The TaskTransferNets this model has, as (source, target) in canonical order (empty without transfer)."""
        from crosstask_cli.tasks import default_pairs

        if not self.transfer:
            return ()
        return self.transfer_pairs if self.transfer_pairs is not None else default_pairs(self.tasks)

    @property
    def has_transfer(self) -> bool:
        return bool(self.pairs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["transfer_pairs"] = None if self.transfer_pairs is None else [list(p) for p in self.transfer_pairs]
        return d


class CrossTaskNet(nn.Module):
    """Multi-task network for dense prediction with cross-task transfer: a shared ResNet encoder, one skip decoder
    per task (``<task>_decoder``) and one TaskTransferNet per transfer pair (``<source>_to_<target>``).

    ``forward(x)`` with x: B×3×H×W normalised RGB returns :class:`Predictions` at H×W. Sizes that are
    not multiples of 32 are padded (replicate) before the encoder and the outputs cropped back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from crosstask_cli.tasks import TaskContext, get_task, ordered

        if config.num_classes < 2 and "seg" in config.tasks:
            raise ConfigError(f"num_classes must be at least 2, got {config.num_classes}")
        self.config = config
        self.encoder = ResNetEncoder(config.enc_layers)
        ctx = TaskContext(num_classes=config.num_classes)
        # Submodules exist only for the configured tasks and pairs (single-task baselines have one decoder, plain
        # multi-task models no TaskTransferNets), so parameter counts and checkpoints say what was trained.
        # Built in registry order, so that the two-task model draws its initial weights as before.
        self.task_order = ordered(config.tasks)
        for t in self.task_order:
            spec = get_task(t)
            decoder = SkipDecoder(self.encoder.channels, spec.channels(ctx), align_corners=config.decoder_align_corners)
            self.add_module(f"{t}_decoder", decoder)
        tt = dict(batch_norm=config.ttnet_batch_norm, wider=config.wider_ttnet)
        for s, t in config.pairs:
            src, dst = get_task(s), get_task(t)
            net = TaskTransferNet(src.channels(ctx), dst.channels(ctx), log_softmax_input=src.transfer_input ==
                                  "log_softmax", output_activation=dst.transfer_output, **tt)  # fmt: skip
            self.add_module(f"{s}_to_{t}", net)
        self._activations = {t: get_task(t).activate for t in self.task_order}

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def decoders(self) -> dict[str, nn.Module]:
        return {t: getattr(self, f"{t}_decoder") for t in self.task_order}

    @property
    def transfer_nets(self) -> dict[tuple[str, str], nn.Module]:
        return {(s, t): getattr(self, f"{s}_to_{t}") for s, t in self.config.pairs}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def forward(self, x: torch.Tensor, direct_only: bool = False) -> Predictions:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        features = self.encoder(x)
        direct = {t: self._activations[t](self.decoders[t](features)) for t in self.task_order}
        transferred = {}
        if not direct_only:
            transferred = {(s, t): net(direct[s]) for (s, t), net in self.transfer_nets.items()}
        out = Predictions(direct=direct, transferred=transferred)
        if ph or pw:
            out = out.map(lambda t: t[..., :h, :w])
        return out


def build_model(
    enc_layers: int = 34,
    num_classes: int = 7,
    pretrained: bool = False,
    ttnet_batch_norm: bool = False,
    wider_ttnet: bool = False,
    encoder_weights: str | Path | None = None,
    tasks: tuple[str, ...] = ("seg", "depth"),
    transfer: bool = True,
    transfer_pairs: tuple[tuple[str, str], ...] | None = None,
) -> CrossTaskNet:
    """Build a CrossTaskNet.

    ``pretrained=True`` loads torchvision's ImageNet weights from the local torch cache (never downloads;
    raises :class:`PretrainedWeightsMissing` naming the expected file). ``encoder_weights`` loads a local
    ResNet state dict instead. ``tasks`` (any of the registry's: seg, depth, normal) and ``transfer`` build the
    baselines: one task only, or several without TaskTransferNets (plain multi-task learning);
    ``transfer_pairs`` chooses the TaskTransferNets as (source, target) pairs (default: every ordered pair).
    """
    config = ModelConfig(enc_layers, num_classes, ttnet_batch_norm, wider_ttnet, tuple(tasks), transfer,
                         transfer_pairs=None if transfer_pairs is None else tuple(map(tuple, transfer_pairs)))  # fmt: skip
    model = CrossTaskNet(config)
    if encoder_weights is not None:
        model.encoder.load_weights(encoder_weights)
    elif pretrained:
        model.encoder.load_imagenet()
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
