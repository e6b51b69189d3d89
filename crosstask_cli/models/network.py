"""CrossTaskNet: shared ResNet encoder, two task decoders and two TaskTransferNets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from crosstask_cli.models.decoder import SkipDecoder
from crosstask_cli.models.encoder import RESNET_DEPTHS, ResNetEncoder
from crosstask_cli.models.transfer_net import TaskTransferNet

SIZE_MULTIPLE = 32  # total stride of the encoder


class Predictions(NamedTuple):
    """Outputs of CrossTaskNet.

    seg: B×C×H×W logits; depth: B×1×H×W (dataset depth units);
    seg_from_depth: B×C×H×W log-probabilities from the depth→seg TaskTransferNet;
    depth_from_seg: B×1×H×W from the seg→depth TaskTransferNet. The transferred fields are None
    for a ``direct_only`` forward.
    """

    seg: torch.Tensor
    depth: torch.Tensor
    seg_from_depth: torch.Tensor | None = None
    depth_from_seg: torch.Tensor | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a CrossTaskNet (stored in checkpoints as ``model_config``)."""

    enc_layers: int = 34
    num_classes: int = 7
    ttnet_batch_norm: bool = False
    wider_ttnet: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class CrossTaskNet(nn.Module):
    """Multi-task network for semantic segmentation + depth with cross-task transfer.

    ``forward(x)`` with x: B×3×H×W normalised RGB returns :class:`Predictions` at H×W. Sizes that are
    not multiples of 32 are padded (replicate) before the encoder and the outputs cropped back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.enc_layers not in RESNET_DEPTHS:
            raise ValueError(f"enc_layers must be one of {RESNET_DEPTHS}, got {config.enc_layers}")
        if config.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {config.num_classes}")
        self.config = config
        self.encoder = ResNetEncoder(config.enc_layers)
        self.seg_decoder = SkipDecoder(self.encoder.channels, config.num_classes)
        self.depth_decoder = SkipDecoder(self.encoder.channels, 1)
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
        seg = self.seg_decoder(features)
        depth = self.depth_decoder(features)
        if direct_only:
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
) -> CrossTaskNet:
    """Build a CrossTaskNet.

    ``pretrained=True`` loads torchvision's ImageNet weights from the local torch cache (never downloads;
    raises :class:`PretrainedWeightsMissing` naming the expected file). ``encoder_weights`` loads a local
    ResNet state dict instead.
    """
    model = CrossTaskNet(ModelConfig(enc_layers, num_classes, ttnet_batch_norm, wider_ttnet))
    if encoder_weights is not None:
        model.encoder.load_weights(encoder_weights)
    elif pretrained:
        model.encoder.load_imagenet()
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
