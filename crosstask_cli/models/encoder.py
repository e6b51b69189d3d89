"""ResNet encoder returning the five feature maps the skip decoders need."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crosstask_cli.errors import ConfigError, InputError, PretrainedWeightsMissing

RESNET_DEPTHS = (18, 34, 50, 101, 152)

# torchvision's IMAGENET1K_V1 weight files: the names the local torch hub cache would hold.
_IMAGENET_FILES = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
    101: "resnet101-63fe2227.pth",
    152: "resnet152-394f9c45.pth",
}


def imagenet_weights_path(depth: int) -> Path:
    """Where torchvision caches the ImageNet weights of ResNet-`depth` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _IMAGENET_FILES[depth]


class ResNetEncoder(nn.Module):
    """torchvision ResNet without the classifier.

    ``forward(x)`` with x: B×3×H×W returns five maps at strides 2, 4, 8, 16, 32
    (stem after ReLU, maxpool+layer1, layer2, layer3, layer4).
    """

    def __init__(self, depth: int = 34) -> None:
        super().__init__()
        import torchvision

        if depth not in RESNET_DEPTHS:
            raise ConfigError(f"enc_layers must be one of {RESNET_DEPTHS}, got {depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]

    @property
    def last_shared_layer(self) -> nn.Module:
        """The last block of layer4 (GradNorm's ``params="block"``: task gradient norms over all its parameters)."""
        return self.layer4[-1]

    @property
    def last_shared_weight(self) -> nn.Parameter:
        """``layer4[-1].conv2.weight``, where the original method measures GradNorm's task gradient norms (for the
        bottleneck blocks of ResNet-50+ this is the block's middle 3×3 convolution, as in the original)."""
        return self.layer4[-1].conv2.weight

    def load_weights(self, path: str | Path) -> None:
        """Load a ResNet state dict (torchvision naming; ``fc.*`` keys ignored) from a local file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
            raise InputError(f"{path}: not a loadable PyTorch state dict ({exc})") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InputError(f"{path}: expected a ResNet state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputError(
                f"{path}: not a ResNet-{self.depth} state dict "
                f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
            )

    def load_imagenet(self) -> None:
        """Load torchvision's ImageNet weights from the local torch cache, never from the network."""
        path = imagenet_weights_path(self.depth)
        if not path.is_file():
            raise PretrainedWeightsMissing(
                f"ImageNet weights for ResNet-{self.depth} not found at {path} (nothing is downloaded). "
                f"Copy torchvision's {_IMAGENET_FILES[self.depth]} there, or pass a local file with "
                "encoder_weights=PATH (CLI: --encoder-weights PATH)."
            )
        self.load_weights(path)
