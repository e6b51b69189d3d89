"""Weight initialisation of the layers this toolkit adds on top of the encoder."""

from __future__ import annotations

from torch import nn


def xavier_init_(module: nn.Module) -> None:
    """Xavier-normal weights and zero bias for every convolution inside ``module``, as the original method
    initialises its decoders and TaskTransferNets (BatchNorm layers keep PyTorch's weight 1, bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
