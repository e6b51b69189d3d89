"""AdaMT-Net (Jha et al. 2020, "AdaMT-Net: An Adaptive Weight Learning Based Multi-Task Learning Model for Scene
Understanding"), as the original cross-task project reimplemented it, with its defects fixed (README "Differences").

Encoder (shared, :class:`AdaMTEncoder`): four double-conv stages 64/128/256/512 whose inputs are densely skipped
(each stage also reads every earlier stage, max-pooled to its size) and a 1×1 bottleneck to 1024 channels at H/16.
Channel dropout (``Dropout2d``, p = 0.5) acts on each stage's output before it is pooled into the next, and on every
decoder block's output; it is active in training only.

Decoder (one per task, :class:`AdaMTDecoder`): four blocks, each on (upsampled input, encoder skip):
l1 = σ(BN(conv3)), l2 = σ(BN(conv3(l1))), attention = W·l1·l2 with W a learned C×h×w map, output
concat(l2, attention). W is one map per block shared by every sample (the original keeps one per batch position);
at an input size other than the one the model was built for, W is resized bilinearly to the feature map.
PyTorch's default initialisation, W uniform in [0, 1), as the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_CHANNELS = (64, 128, 256, 512)
BOTTLENECK = 1024
DECODER_CHANNELS = (256, 128, 64, 32)  # b of blocks dec1..dec4 (each outputs 2b channels)
SIZE_MULTIPLE = 16  # four poolings


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """conv3, BN, ReLU, conv3, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


def pool(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    for _ in range(times):
        x = F.max_pool2d(x, 2, 2)
    return x


class AdaMTEncoder(nn.Module):
    """``forward(x)``: x B×3×H×W (H, W multiples of 16) → [e1 (64, H), e2 (128, H/2), e3 (256, H/4), e4 (512, H/8),
    z (1024, H/16)]."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        c = ENCODER_CHANNELS
        self.enc1 = double_conv(3, c[0])
        self.enc2 = double_conv(c[0], c[1])
        self.enc3 = double_conv(c[1] + c[0], c[2])
        self.enc4 = double_conv(c[2] + c[1] + c[0], c[3])
        self.bottleneck = nn.Conv2d(sum(c), BOTTLENECK, 1)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(pool(self.drop(e1)))
        e3 = self.enc3(torch.cat((pool(self.drop(e2)), pool(e1, 2)), dim=1))
        e4 = self.enc4(torch.cat((pool(self.drop(e3)), pool(e2, 2), pool(e1, 3)), dim=1))
        z = self.bottleneck(torch.cat((pool(self.drop(e4)), pool(e3, 2), pool(e2, 3), pool(e1, 4)), dim=1))
        return [e1, e2, e3, e4, z]

    @property
    def last_shared_layer(self) -> nn.Module:
        return self.bottleneck

    @property
    def last_shared_weight(self) -> nn.Parameter:
        return self.bottleneck.weight


class AttentionDecoderBlock(nn.Module):
    """(x, skip) → 2b channels at skip's size (module doc); ``size``: the (h, w) of W."""

    def __init__(self, cin: int, cout: int, size: tuple[int, int], dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.weight = nn.Parameter(torch.rand(cout, *size))
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        v = torch.cat((F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), skip), dim=1)
        l1 = torch.sigmoid(self.bn1(self.conv1(v)))
        l2 = torch.sigmoid(self.bn2(self.conv2(l1)))
        w = self.weight
        if w.shape[-2:] != l1.shape[-2:]:
            w = F.interpolate(w[None], size=l1.shape[-2:], mode="bilinear", align_corners=False)[0]
        return self.drop(torch.cat((l2, w * l1 * l2), dim=1))


class AdaMTDecoder(nn.Module):
    """One task's decoder on the encoder's outputs; ``input_size``: the (H, W) the model is built for (multiples of
    16). ``forward(features)`` → B×C×H×W raw map."""

    def __init__(self, out_channels: int, input_size: tuple[int, int], dropout: float = 0.5) -> None:
        super().__init__()
        h, w = input_size
        c, d = ENCODER_CHANNELS, DECODER_CHANNELS
        ins = (BOTTLENECK + c[3], 2 * d[0] + c[2], 2 * d[1] + c[1], 2 * d[2] + c[0])
        scales = (8, 4, 2, 1)
        self.blocks = nn.ModuleList(
            AttentionDecoderBlock(a, b, (h // s, w // s), dropout) for a, b, s in zip(ins, d, scales, strict=True)
        )
        self.head = nn.Conv2d(2 * d[3], out_channels, 1, bias=False)
        self.feature_channels = (2 * d[0], 2 * d[3])  # of features(): KD4MTL's adaptors

    def features(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(dec1's output, B×512×H/8×W/8; dec4's output, B×64×H×W): the deepest and the last task-specific maps."""
        e1, e2, e3, e4, z = features
        first = x = self.blocks[0](z, e4)
        for block, skip in zip(self.blocks[1:], (e3, e2, e1), strict=True):
            x = block(x, skip)
        return first, x

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(features)[1])

    def head_output(self, last: torch.Tensor) -> torch.Tensor:
        return self.head(last)
