"""CrossTaskNet: a shared network (ResNet encoder, SegNet, SegNet-MTAN or AdaMT-Net's), one task-specific part per
task and a TaskTransferNet per pair of tasks."""

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

SIZE_MULTIPLE = 32  # total stride of the ResNet encoder
INPUT_SPACES = ("imagenet", "unit")


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
    # the network (crosstask_cli.architectures); input_size (H, W): the size an architecture with learned spatial
    # maps (adamt-net) is built for, None for the others
    arch: str = "resnet"
    input_size: tuple[int, int] | None = None
    # what the model's inputs are: "imagenet" (RGB in [0, 1] normalised by ImageNet's mean and std, crosstask's
    # data) or "unit" (RGB in [0, 1]: weights imported from MTAN, trained on its unnormalised data). The data
    # pipeline always gives ImageNet-normalised images; a "unit" model undoes the normalisation first.
    input_space: str = "imagenet"

    def __post_init__(self) -> None:
        from crosstask_cli.architectures import get_arch
        from crosstask_cli.tasks import parse_pairs, parse_tasks

        arch = get_arch(self.arch)
        if self.input_space not in INPUT_SPACES:
            raise ConfigError(f"input_space must be one of {', '.join(INPUT_SPACES)}, got {self.input_space!r}")
        if arch.needs_input_size:
            if self.input_size is None:
                raise ConfigError(f"{self.arch} is built for one input size: give input_size=(H, W)")
            size = tuple(int(v) for v in self.input_size)
            if len(size) != 2 or any(v < arch.size_multiple or v % arch.size_multiple for v in size):
                raise ConfigError(f"{self.arch}: input_size must be two multiples of {arch.size_multiple}, got "
                                  f"{self.input_size}")  # fmt: skip
            object.__setattr__(self, "input_size", size)
        else:
            object.__setattr__(self, "input_size", None)

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
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        return d


class CrossTaskNet(nn.Module):
    """Multi-task network for dense prediction with cross-task transfer: a shared part (``encoder``), one
    task-specific part per task (``<task>_decoder``) and one TaskTransferNet per transfer pair
    (``<source>_to_<target>``). SegNet-MTAN also has attention blocks shared by the tasks' branches
    (``shared_attention``).

    ``forward(x)`` with x: B×3×H×W normalised RGB returns :class:`Predictions` at H×W. Sizes that are
    not multiples of the architecture's stride (32; AdaMT-Net 16) are padded (replicate) and the outputs cropped back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from crosstask_cli.architectures import get_arch
        from crosstask_cli.tasks import TaskContext, get_task, ordered

        if config.num_classes < 2 and "seg" in config.tasks:
            raise ConfigError(f"num_classes must be at least 2, got {config.num_classes}")
        self.config = config
        self.size_multiple = get_arch(config.arch).size_multiple
        ctx = TaskContext(num_classes=config.num_classes)
        # Submodules exist only for the configured tasks and pairs (single-task baselines have one decoder, plain
        # multi-task models no TaskTransferNets), so parameter counts and checkpoints say what was trained.
        # Built in registry order, so that the two-task model draws its initial weights as before.
        self.task_order = ordered(config.tasks)
        make_decoder = self._build_shared(config)
        for t in self.task_order:
            self.add_module(f"{t}_decoder", make_decoder(get_task(t).channels(ctx)))
        tt = dict(batch_norm=config.ttnet_batch_norm, wider=config.wider_ttnet)
        for s, t in config.pairs:
            src, dst = get_task(s), get_task(t)
            net = TaskTransferNet(src.channels(ctx), dst.channels(ctx), log_softmax_input=src.transfer_input ==
                                  "log_softmax", output_activation=dst.transfer_output, **tt)  # fmt: skip
            self.add_module(f"{s}_to_{t}", net)
        self._activations = {t: get_task(t).activate for t in self.task_order}
        if config.input_space == "unit":
            from crosstask_cli.data.dataset import IMAGENET_MEAN, IMAGENET_STD

            self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _build_shared(self, config: ModelConfig):
        """Build the shared part (and SegNet-MTAN's shared attention blocks); returns the task-specific part's
        constructor (output channels → module)."""
        self.shared_attention = None
        if config.arch == "resnet":
            self.encoder = ResNetEncoder(config.enc_layers)
            channels = self.encoder.channels
            return lambda c: SkipDecoder(channels, c, align_corners=config.decoder_align_corners)
        if config.arch in ("segnet", "segnet-mtan"):
            from crosstask_cli.models.segnet import MTANSharedBlocks, MTANTaskBranch, SegNetHead, SegNetTrunk

            self.encoder = SegNetTrunk()
            if config.arch == "segnet":
                return SegNetHead
            self.shared_attention = MTANSharedBlocks()
            return MTANTaskBranch
        from crosstask_cli.models.adamt import AdaMTDecoder, AdaMTEncoder

        self.encoder = AdaMTEncoder()
        return lambda c: AdaMTDecoder(c, config.input_size)

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
        """Every parameter shared by the tasks: the encoder's (whose outputs the tasks read) and, for SegNet-MTAN,
        the attention blocks every task's branch applies."""
        params = list(self.encoder.parameters())
        if self.shared_attention is not None:
            params += list(self.shared_attention.parameters())
        return params

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.size_multiple, (-w) % self.size_multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, h, w

    def forward(
        self, x: torch.Tensor, direct_only: bool = False, task_features: bool = False
    ) -> Predictions | tuple[Predictions, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Predictions at x's size; with ``task_features`` also, per task, the two task-specific feature maps KD4MTL
        distils (deepest, last: see each decoder's ``features``), at the padded size."""
        x, h, w = self._pad(x)
        if self.config.input_space == "unit":
            x = x * self.input_std.to(x.dtype) + self.input_mean.to(x.dtype)
        features = self.encoder(x)
        shared = (self.shared_attention,) if self.shared_attention is not None else ()
        direct, maps = {}, {}
        for t in self.task_order:
            decoder = self.decoders[t]
            if task_features:
                maps[t] = decoder.features(features, *shared)
                raw = decoder.head_output(maps[t][1])
            else:
                raw = decoder(features, *shared)
            direct[t] = self._activations[t](raw)
        transferred = {}
        if not direct_only:
            transferred = {(s, t): net(direct[s]) for (s, t), net in self.transfer_nets.items()}
        out = Predictions(direct=direct, transferred=transferred)
        if x.shape[-2:] != (h, w):
            out = out.map(lambda t: t[..., :h, :w])
        return (out, maps) if task_features else out


def build_model(  # noqa: PLR0913 - the public API mirrors the model's flags, one keyword each
    enc_layers: int = 34,
    num_classes: int = 7,
    pretrained: bool = False,
    ttnet_batch_norm: bool = False,
    wider_ttnet: bool = False,
    encoder_weights: str | Path | None = None,
    tasks: tuple[str, ...] = ("seg", "depth"),
    transfer: bool = True,
    transfer_pairs: tuple[tuple[str, str], ...] | None = None,
    arch: str = "resnet",
    input_size: tuple[int, int] | None = None,
) -> CrossTaskNet:
    """Build a CrossTaskNet.

    ``arch`` (crosstask_cli.architectures): ``resnet`` (the method's network), ``segnet-mtan``, ``segnet`` or
    ``adamt-net`` (which needs ``input_size=(H, W)``, the training size, multiples of 16). ``enc_layers``,
    ``pretrained`` and ``encoder_weights`` concern the ResNet encoder only.

    ``pretrained=True`` loads torchvision's ImageNet weights from the local torch cache (never downloads;
    raises :class:`PretrainedWeightsMissing` naming the expected file). ``encoder_weights`` loads a local
    ResNet state dict instead. ``tasks`` (any of the registry's: seg, depth, normal) and ``transfer`` build the
    baselines: one task only, or several without TaskTransferNets (plain multi-task learning);
    ``transfer_pairs`` chooses the TaskTransferNets as (source, target) pairs (default: every ordered pair).
    """
    from crosstask_cli.architectures import get_arch

    if (pretrained or encoder_weights is not None) and not get_arch(arch).resnet_encoder:
        raise ConfigError(f"--pretrained and --encoder-weights start a ResNet encoder; {arch} has none (it trains "
                          "from scratch, as its reference)")  # fmt: skip
    config = ModelConfig(enc_layers, num_classes, ttnet_batch_norm, wider_ttnet, tuple(tasks), transfer,
                         transfer_pairs=None if transfer_pairs is None else tuple(map(tuple, transfer_pairs)),
                         arch=arch, input_size=input_size)  # fmt: skip
    model = CrossTaskNet(config)
    if encoder_weights is not None:
        model.encoder.load_weights(encoder_weights)
    elif pretrained:
        model.encoder.load_imagenet()
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_dict_mismatch(expected: dict, found: dict) -> str:
    """One line saying how ``found`` differs from ``expected`` (missing/unexpected keys, shapes); '' if it fits."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        k
        for k in expected
        if k in found and (not torch.is_tensor(found[k]) or tuple(found[k].shape) != tuple(expected[k].shape))
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if shapes:
        k = shapes[0]
        got = tuple(found[k].shape) if torch.is_tensor(found[k]) else type(found[k]).__name__
        parts.append(f"{len(shapes)} of another shape, e.g. {k}: {got} instead of {tuple(expected[k].shape)}")
    return "; ".join(parts)
