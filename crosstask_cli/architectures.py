"""The network architectures crosstask trains (``--arch``), described without importing torch (the CLI's help).

Every architecture has a shared part (``model.encoder``, whose outputs the task-specific parts read), one
task-specific part per task (``<task>_decoder``) and, with consistency, the TaskTransferNets on its predictions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str
    title: str
    help: str
    size_multiple: int  # inputs are padded to a multiple of this (the shared part's total stride)
    needs_input_size: bool = False  # built for one input size (learned spatial maps)
    resnet_encoder: bool = False  # --enc-layers, --pretrained and --encoder-weights apply


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "resnet",
            "ResNet",
            "ResNet encoder (--enc-layers) and one skip decoder per task: the method's network (default).",
            32,
            resnet_encoder=True,
        ),  # fmt: skip
        Architecture(
            "segnet-mtan",
            "SegNet-MTAN",
            "SegNet with MTAN's per-task attention modules (Liu et al. 2019): "
            "the network of MTAN, PCGrad, KD4MTL and the standard optimiser protocol.",
            32,
        ),  # fmt: skip
        Architecture(
            "segnet",
            "SegNet",
            "The shared SegNet with one head per task (MTAN's split baseline; with one task the single-task SegNet).",
            32,
        ),  # fmt: skip
        Architecture(
            "adamt-net",
            "AdaMT-Net",
            "AdaMT-Net (Jha et al. 2020) as the original project reimplemented it "
            "(dense-skip encoder, attention-weighted decoders, dropout), its defects fixed; built for the "
            "training size.",
            16,
            needs_input_size=True,
        ),  # fmt: skip
    )
}


def arch_names() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def get_arch(name: str) -> Architecture:
    from crosstask_cli.errors import ConfigError

    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def arch_help() -> str:
    return "Network: " + "; ".join(f"{a.name}: {a.help.rstrip('.')}" for a in ARCHITECTURES.values()) + "."
