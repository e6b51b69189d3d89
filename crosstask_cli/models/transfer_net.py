"""TaskTransferNet: a small U-Net mapping one task's prediction to another task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crosstask_cli.models.init import xavier_init_

OUTPUT_ACTIVATIONS = ("log_softmax", "identity", "l2")


def _double_conv(cin: int, cout: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in ((cin, cout), (cout, cout)):
        layers.append(nn.Conv2d(a, b, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TaskTransferNet(nn.Module):
    """U-Net with three down and three up blocks (64/128/256 channels, ×2 when ``wider``).

    Input B×in_channels×H×W with H, W multiples of 8. ``log_softmax_input`` is set for the nets fed by
    segmentation, whose input is logits. Output B×out_channels×H×W through ``output_activation``: ``log_softmax``
    (a segmentation: log-probabilities, usable wherever logits are), ``identity`` (depth), ``l2`` (unit vectors
    per pixel: normals) or ``auto`` (log-softmax for out_channels > 1, else identity: the original's two nets).
    Convolutions start Xavier-normal with zero bias, as the original.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        batch_norm: bool = False,
        wider: bool = False,
        log_softmax_input: bool = False,
        output_activation: str = "auto",
    ) -> None:
        super().__init__()
        if output_activation == "auto":
            output_activation = "log_softmax" if out_channels > 1 else "identity"
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}")
        c1, c2, c3 = (128, 256, 512) if wider else (64, 128, 256)
        self.down1 = _double_conv(in_channels, c1, batch_norm)
        self.down2 = _double_conv(c1, c2, batch_norm)
        self.down3 = _double_conv(c2, c3, batch_norm)
        self.up1 = _double_conv(c3, c2, batch_norm)
        self.up2 = _double_conv(c2 + c2, c1, batch_norm)
        self.up3 = _double_conv(c1 + c1, c1, batch_norm)
        self.head = nn.Conv2d(c1, out_channels, 1, bias=False)
        self.out_channels = out_channels
        self.log_softmax_input = log_softmax_input
        self.output_activation = output_activation
        xavier_init_(self)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        # align_corners=True as in the original method's TaskTransferNet.
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_softmax_input:
            x = F.log_softmax(x, dim=1)
        e1 = F.max_pool2d(self.down1(x), 2)
        e2 = F.max_pool2d(self.down2(e1), 2)
        e3 = F.max_pool2d(self.down3(e2), 2)
        y = self.up1(self._up(e3))
        y = self.up2(self._up(torch.cat((y, e2), dim=1)))
        y = self.up3(self._up(torch.cat((y, e1), dim=1)))
        y = self.head(y)
        if self.output_activation == "log_softmax":
            return F.log_softmax(y, dim=1)
        if self.output_activation == "l2":
            return F.normalize(y, p=2.0, dim=1, eps=1e-12)
        return y
