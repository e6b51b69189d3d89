"""CrossTaskNet: shared ResNet encoder, two task decoders and two TaskTransferNets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.decoder import SkipDecoder
from crosstask_cli.models.encoder import ResNetEncoder
from crosstask_cli.models.transfer_net import TaskTransferNet

SIZE_MULTIPLE = 32  # total stride of the encoder


class Predictions(NamedTuple):
    """Outputs of CrossTaskNet.

    seg: B×C×H×W logits; depth: B×1×H×W (dataset depth units);
    seg_from_depth: B×C×H×W log-probabilities from the depth→seg TaskTransferNet;
    depth_from_seg: B×1×H×W from the seg→depth TaskTransferNet. The transferred fields are None
    for a ``direct_only`` forward and for models without TaskTransferNets; ``seg`` or ``depth`` is None for a
    single-task model of the other task.
    """

    seg: torch.Tensor | None
    depth: torch.Tensor | None
    seg_from_depth: torch.Tensor | None = None
    depth_from_seg: torch.Tensor | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a CrossTaskNet (stored in checkpoints as ``model_config``)."""

    enc_layers: int = 34
    num_classes: int = 7
    ttnet_batch_norm: bool = False
    wider_ttnet: bool = False
    tasks: tuple[str, ...] = ("seg", "depth")
    transfer: bool = True  # the TaskTransferNets (cross-task consistency); needs both tasks
    # Bilinear ×2 of the decoders as the original (True). Checkpoints of crosstask 0.1.0 lack this key and were
    # trained with False: loading them keeps their function (engine.checkpoint.model_from_checkpoint).
    decoder_align_corners: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks or set(self.tasks) - {"seg", "depth"}:
            raise ConfigError(f"tasks must be seg, depth or both, got {','.join(self.tasks)}")

    @property
    def has_transfer(self) -> bool:
        return self.transfer and set(self.tasks) == {"seg", "depth"}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d


class CrossTaskNet(nn.Module):
    """Multi-task network for semantic segmentation + depth with cross-task transfer.

    ``forward(x)`` with x: B×3×H×W normalised RGB returns :class:`Predictions` at H×W. Sizes that are
    not multiples of 32 are padded (replicate) before the encoder and the outputs cropped back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {config.num_classes}")
        self.config = config
        self.encoder = ResNetEncoder(config.enc_layers)
        # Submodules exist only for the configured tasks (single-task baselines have one decoder, plain
        # multi-task models no TaskTransferNets), so parameter counts and checkpoints say what was trained.
        if "seg" in config.tasks:
            self.seg_decoder = SkipDecoder(
                self.encoder.channels, config.num_classes, align_corners=config.decoder_align_corners
            )
        if "depth" in config.tasks:
            self.depth_decoder = SkipDecoder(self.encoder.channels, 1, align_corners=config.decoder_align_corners)
        if config.has_transfer:
            tt = dict(batch_norm=config.ttnet_batch_norm, wider=config.wider_ttnet)
            self.seg_to_depth = TaskTransferNet(config.num_classes, 1, log_softmax_input=True, **tt)
            self.depth_to_seg = TaskTransferNet(1, config.num_classes, **tt)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

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
        seg = self.seg_decoder(features) if "seg" in self.config.tasks else None
        depth = self.depth_decoder(features) if "depth" in self.config.tasks else None
        if direct_only or not self.config.has_transfer:
            out = Predictions(seg, depth)
        else:
            out = Predictions(seg, depth, self.depth_to_seg(depth), self.seg_to_depth(seg))
        if ph or pw:
            out = Predictions(*(None if t is None else t[..., :h, :w] for t in out))
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
) -> CrossTaskNet:
    """Build a CrossTaskNet.

    ``pretrained=True`` loads torchvision's ImageNet weights from the local torch cache (never downloads;
    raises :class:`PretrainedWeightsMissing` naming the expected file). ``encoder_weights`` loads a local
    ResNet state dict instead. ``tasks`` and ``transfer`` build the baselines: one task only, or both
    without TaskTransferNets (plain multi-task learning).
    """
    model = CrossTaskNet(ModelConfig(enc_layers, num_classes, ttnet_batch_norm, wider_ttnet, tuple(tasks), transfer))
    if encoder_weights is not None:
        model.encoder.load_weights(encoder_weights)
    elif pretrained:
        model.encoder.load_imagenet()
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
