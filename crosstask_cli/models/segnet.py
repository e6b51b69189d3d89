"""SegNet and SegNet-MTAN (Liu et al. 2019, "End-to-End Multi-Task Learning with Attention"), for any task set.

The shared SegNet (:class:`SegNetTrunk`) is VGG-like: five levels of ``f = (64, 128, 256, 512, 512)`` channels,
each pooled with indices on the way down and max-unpooled with them on the way up. Its outputs, the features the
task-specific parts read, are four lists of five maps (:class:`SegNetFeatures` order):

    e0[i]   first block of encoder level i          e1[i]   last block of encoder level i (pooled into level i+1)
    u[j]    unpooled input of decoder step j        d1[j]   last block of decoder step j (level L = 4 − j)

SegNet-MTAN adds per task an attention branch (:class:`MTANTaskBranch`): soft masks (1×1 convolutions, sigmoid)
over the shared features, with attention blocks (:class:`MTANSharedBlocks`) that every task shares. The split
baseline (``segnet``: MTAN's "split", and with one task the single-task SegNet) reads d1[4] with one head per task
(:class:`SegNetHead`). Module and parameter names follow MTAN's published code so that its state dicts map onto
these modules by prefix (:mod:`crosstask_cli.models.reference`).

Every convolution starts Xavier-normal with zero bias, BatchNorm at weight 1, bias 0, as MTAN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crosstask_cli.models.init import xavier_init_

FILTERS = (64, 128, 256, 512, 512)
LEVELS = len(FILTERS)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """conv3×3 (padding 1, bias), BatchNorm, ReLU: MTAN's ``conv_layer``."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def attention_block(cin: int, mid: int, cout: int) -> nn.Sequential:
    """conv1×1, BN, ReLU, conv1×1, BN, Sigmoid: an attention mask in [0, 1] (MTAN's ``att_layer``)."""
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout), nn.Sigmoid(),
    )  # fmt: skip


def _second_blocks(channels: int, level: int) -> nn.Sequential:
    """The block(s) after a level's first: one for levels 0 and 1, two from level 2 on (nested as MTAN's)."""
    if level < 2:
        return conv_block(channels, channels)
    return nn.Sequential(conv_block(channels, channels), conv_block(channels, channels))


class SegNetTrunk(nn.Module):
    """The shared SegNet encoder-decoder. ``forward(x)``: x B×3×H×W, H and W multiples of 32 → the 20 feature maps
    [*e0, *e1, *u, *d1] (module doc), d1[4] being B×64×H×W."""

    def __init__(self) -> None:
        super().__init__()
        f = FILTERS
        self.encoder_block = nn.ModuleList([conv_block(3, f[0])] + [conv_block(f[i - 1], f[i]) for i in range(1, 5)])
        self.conv_block_enc = nn.ModuleList(_second_blocks(f[i], i) for i in range(LEVELS))
        # decoder level L maps f[L] → f[L−1] (level 0: 64 → 64)
        self.decoder_block = nn.ModuleList([conv_block(f[0], f[0])] + [conv_block(f[L], f[L - 1]) for L in range(1, 5)])
        self.conv_block_dec = nn.ModuleList(_second_blocks(f[max(L - 1, 0)], L) for L in range(LEVELS))
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e0, e1, indices = [], [], []
        h = x
        for i in range(LEVELS):
            e0.append(self.encoder_block[i](h))
            e1.append(self.conv_block_enc[i](e0[i]))
            h, idx = F.max_pool2d(e1[i], 2, 2, return_indices=True)
            indices.append(idx)
        u, d1 = [], []
        for j in range(LEVELS):
            level = LEVELS - 1 - j
            u.append(F.max_unpool2d(h, indices[level], 2, 2, output_size=e1[level].shape[-2:]))
            h = self.conv_block_dec[level](self.decoder_block[level](u[j]))
            d1.append(h)
        return [*e0, *e1, *u, *d1]

    @property
    def last_shared_layer(self) -> nn.Module:
        """The shared decoder's last block (GradNorm's ``params="block"``)."""
        return self.conv_block_dec[0]

    @property
    def last_shared_weight(self) -> nn.Parameter:
        """The shared decoder's last convolution weight (GradNorm's ``params="conv"``)."""
        return self.conv_block_dec[0][0].weight


def split_features(features: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
    """[*e0, *e1, *u, *d1] → (e0, e1, u, d1)."""
    n = LEVELS
    return features[:n], features[n : 2 * n], features[2 * n : 3 * n], features[3 * n :]


class MTANSharedBlocks(nn.Module):
    """The attention blocks every task's branch applies (shared parameters that read task-specific maps)."""

    def __init__(self) -> None:
        super().__init__()
        f = FILTERS
        self.encoder_block_att = nn.ModuleList(conv_block(f[i], f[min(i + 1, 4)]) for i in range(LEVELS))
        # level L: f[L] → f[L−1], except level 0 (64 → 64) and level 4 (512 → 512)
        outs = (f[0], f[0], f[1], f[2], f[4])
        self.decoder_block_att = nn.ModuleList(conv_block(f[L], outs[L]) for L in range(LEVELS))
        xavier_init_(self)


def prediction_head(channels: int) -> nn.Sequential:
    """conv3×3 64 → 64 then conv1×1 64 → C, nothing between (MTAN's ``pred_task``)."""
    return nn.Sequential(nn.Conv2d(FILTERS[0], FILTERS[0], 3, padding=1), nn.Conv2d(FILTERS[0], channels, 1))


class MTANTaskBranch(nn.Module):
    """One task's attention branch of SegNet-MTAN and its head; ``forward(features, shared)`` → B×C×H×W raw map."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        f = FILTERS
        self.encoder_att = nn.ModuleList([attention_block(f[0], f[0], f[0])] +
                                         [attention_block(2 * f[i], f[i], f[i]) for i in range(1, 5)])  # fmt: skip
        self.decoder_att = nn.ModuleList([attention_block(2 * f[0], f[0], f[0])] +
                                         [attention_block(f[L] + f[L - 1], f[L - 1], f[L - 1]) for L in range(1, 5)])  # fmt: skip
        self.head = prediction_head(out_channels)
        self.feature_channels = (f[4], f[0])  # of features(): KD4MTL's adaptors
        xavier_init_(self)

    def features(self, features: list[torch.Tensor], shared: MTANSharedBlocks) -> tuple[torch.Tensor, torch.Tensor]:
        """(a[4], b[4]): the last encoder attention output (B×512×H/32×W/32) and the last decoder attention output
        (B×64×H×W), the two levels KD4MTL distils."""
        e0, e1, u, d1 = split_features(features)
        a = None
        for i in range(LEVELS):
            mask = self.encoder_att[i](e0[0] if i == 0 else torch.cat((e0[i], a), dim=1))
            a = F.max_pool2d(shared.encoder_block_att[i](mask * e1[i]), 2, 2)
        last_encoder, b = a, a
        for j in range(LEVELS):
            level = LEVELS - 1 - j
            v = shared.decoder_block_att[level](F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=True))
            b = self.decoder_att[level](torch.cat((u[j], v), dim=1)) * d1[j]
        return last_encoder, b

    def forward(self, features: list[torch.Tensor], shared: MTANSharedBlocks) -> torch.Tensor:
        return self.head(self.features(features, shared)[1])

    def head_output(self, last: torch.Tensor) -> torch.Tensor:
        return self.head(last)


class SegNetHead(nn.Module):
    """One task's head on the shared decoder's last output d1[4] (the split baseline)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.head = prediction_head(out_channels)
        self.feature_channels = (FILTERS[4], FILTERS[0])
        xavier_init_(self)

    def features(self, features: list[torch.Tensor], shared: None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(p[4], d1[4]): the encoder's pooled output and the head's input, KD4MTL's two levels for the split network
        (it has no task-specific features before its heads)."""
        return F.max_pool2d(features[2 * LEVELS - 1], 2, 2), features[-1]

    def forward(self, features: list[torch.Tensor], shared: None = None) -> torch.Tensor:
        return self.head(features[-1])

    def head_output(self, last: torch.Tensor) -> torch.Tensor:
        return self.head(last)
