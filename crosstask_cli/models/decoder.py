"""Skip decoder: five blocks of 3×(conv3×3, BN, ReLU) + bilinear ×2 (``align_corners=True``), from stride 32 back
to full resolution. Convolutions start Xavier-normal with zero bias, as the original."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crosstask_cli.models.init import xavier_init_


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """3×(conv3×3, BN, ReLU) then bilinear upsampling ×2."""

    def __init__(self, cin: int, cout: int, align_corners: bool = True) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout), conv_bn_relu(cout, cout))
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(self.convs(x), self.align_corners)


def upsample2x(x: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Bilinear ×2; ``align_corners=True`` as the original method's decoders (and TaskTransferNets). ``False`` only
    serves checkpoints of crosstask 0.1.0, whose decoders were trained that way."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)


class SkipDecoder(nn.Module):
    """Decodes encoder features (strides 2..32) into an out_channels map at input resolution.

    Each block after the first takes concat(upsampled previous output, encoder skip at that stride).
    The 1×1 head has no bias.
    """

    def __init__(
        self, encoder_channels: tuple[int, ...], out_channels: int, width: int = 128, align_corners: bool = True
    ) -> None:
        super().__init__()
        skips = list(reversed(encoder_channels[:-1]))  # strides 16, 8, 4, 2
        ins = [encoder_channels[-1]] + [width + s for s in skips]
        self.align_corners = align_corners
        self.blocks = nn.ModuleList(DecoderBlock(c, width, align_corners) for c in ins)
        self.head = nn.Conv2d(width, out_channels, 1, bias=False)
        self.feature_channels = (width, width)  # of features(): KD4MTL's adaptors
        xavier_init_(self)

    def features(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the first block's output, width×H/16×W/16; the last block's convolutions, width×H/2×W/2): the deepest and
        the last task-specific maps (KD4MTL's two levels)."""
        x = first = self.blocks[0](features[-1])
        for block, skip in zip(self.blocks[1:-1], reversed(features[1:-1]), strict=True):
            x = block(torch.cat((x, skip), dim=1))
        return first, self.blocks[-1].convs(torch.cat((x, features[0]), dim=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head_output(self.features(features)[1])

    def head_output(self, x: torch.Tensor) -> torch.Tensor:
        """The raw map at full resolution from the last block's convolutions."""
        # head(upsample(x)) == upsample(head(x)): both are linear and the head has no bias, so the last
        # upsampling runs on out_channels maps instead of 128 (same function, far less full-resolution work).
        # The few-channel output is made planar (NCHW) even in a channels_last model: per-pixel reductions over
        # the classes (cross-entropy, the metrics' class ids) are then vectorised over whole planes on CPU.
        return upsample2x(self.head(x).contiguous(), self.align_corners)
