"""Weights of the reference implementations, loaded into crosstask models.

``source="mtan"``: a state dict saved from MTAN's published SegNet code (Liu et al. 2019; ``model.state_dict()`` of
its SegNet-MTAN or split SegNet, 2 or 3 tasks), whose keys are ``encoder_block…``, ``conv_block_enc…``,
``decoder_block…``, ``conv_block_dec…``, ``encoder_block_att…``, ``decoder_block_att…``, ``encoder_att.K…``,
``decoder_att.K…``, ``pred_taskN…`` and ``logsigma``. MTAN's task K (``pred_task{K+1}``) is seg, depth, normal in
that order. Its 2-task network also holds the level-0 attention modules of a third, unused branch
(``encoder_att.2.0``, ``decoder_att.2.0``: 21,248 parameters); they are skipped. ``logsigma`` (uncertainty
weighting's log variances) is not part of a crosstask model and is returned to the caller.

``source="adamt-net"``: a state dict saved from the original cross-task project's AdaMT-Net (``AdaMTNet`` or
``AdaMTNet3tasks``), whose keys are ``encoder.enc_block{1-4}.conv{1,2}.{0,1}…`` (conv, BN), ``encoder.bottleneck…``,
``decoder_{segmt,depth,normal}.dec_block{1-4}.conv{1,2}.{0,1}…``, ``….dec_block{1-4}.W`` and ``….final_conv.weight``.
Two of its defects are fixed in crosstask's network (README, differences), so two things cannot load as they are:

- ``W`` holds one attention map per batch position (B×C×h×w; the original multiplies sample i by ``W[i]``); the
  crosstask block has one map shared by every sample. ``attention_position`` (default 0) chooses the position
  taken: with 0 every sample gets the map the original gives the first sample of a batch, i.e. a batch of one. The
  number of positions is returned as ``attention_positions``.
- The 3-task original's normal head has one output channel (so its "normalised" normal is ±1); a crosstask normal
  head has three. That head is not loaded: the normal decoder's blocks are, the head keeps its initialisation, and
  ``normal_head_not_loaded`` says so in what is returned.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from crosstask_cli.errors import InputError
from crosstask_cli.models.network import state_dict_mismatch

SOURCES = ("mtan", "adamt-net")
ADAMT_DECODERS = {"decoder_segmt": "seg", "decoder_depth": "depth", "decoder_normal": "normal"}
_ADAMT_ENC = re.compile(r"^encoder\.enc_block([1-4])\.conv([12])\.([01])\.(.*)$")
_ADAMT_DEC = re.compile(r"^(decoder_\w+?)\.dec_block([1-4])\.(?:conv([12])\.([01])\.(.*)|(W))$")
_ADAMT_HEAD = re.compile(r"^(decoder_\w+?)\.final_conv\.weight$")
MTAN_TASKS = ("seg", "depth", "normal")  # pred_task1, pred_task2, pred_task3
_SHARED = ("encoder_block.", "conv_block_enc.", "decoder_block.", "conv_block_dec.")
_SHARED_ATT = ("encoder_block_att.", "decoder_block_att.")
_BRANCH = re.compile(r"^(encoder_att|decoder_att)\.(\d+)\.(\d+)\.(.*)$")
_HEAD = re.compile(r"^pred_task(\d+)\.(.*)$")


def load_reference_weights(
    model: torch.nn.Module, state_dict: dict[str, Any], source: str = "mtan", attention_position: int = 0
) -> dict:
    """Load ``state_dict`` (saved by the ``source`` implementation) into ``model`` (a CrossTaskNet of the matching
    architecture and tasks); its TaskTransferNets, which the reference lacks, keep their weights. Returns what the
    reference holds beyond the network or could not load ({"logsigma": tensor} for MTAN; for AdaMT-Net the number
    of ``attention_positions`` and, for its 3-task network, ``normal_head_not_loaded``: see the module docstring).
    A file that does not fit the model is one :class:`InputError` line naming the first difference."""
    if source not in SOURCES:
        raise InputError(f"unknown reference source {source!r}; choose from {', '.join(SOURCES)}")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise InputError("expected a state dict (a dict of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if source == "mtan":
        mapped, extras = _map_mtan(model, state)
    else:
        mapped, extras = _map_adamt(model, state, attention_position)
    own = {
        k: v for k, v in model.state_dict().items() if not _is_transfer(k, model) and k not in extras.get("kept", ())
    }
    mismatch = state_dict_mismatch(own, mapped)
    if mismatch:
        name = "an MTAN" if source == "mtan" else "an AdaMT-Net"
        raise InputError(f"not {name} {model.config.arch} state dict for tasks {','.join(model.task_order)} "
                         f"({mismatch})")  # fmt: skip
    model.load_state_dict(mapped, strict=False)
    extras.pop("kept", None)
    return extras


def _is_transfer(key: str, model) -> bool:
    return any(key.startswith(f"{s}_to_{t}.") for s, t in model.config.pairs)


def _map_mtan(model, state: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    arch, tasks = model.config.arch, tuple(model.task_order)
    if arch not in ("segnet-mtan", "segnet"):
        raise InputError(f"MTAN weights are SegNet-MTAN or SegNet weights; the model is --arch {arch}")
    if tasks != MTAN_TASKS[: len(tasks)] or len(tasks) < 2:
        raise InputError(f"MTAN's networks predict seg,depth or seg,depth,normal (in that order); the model's tasks "
                         f"are {','.join(tasks)}")  # fmt: skip
    mapped, extras = {}, {}
    for key, value in state.items():
        if key == "logsigma":
            extras["logsigma"] = value
        elif key.startswith(_SHARED):
            mapped[f"encoder.{key}"] = value
        elif key.startswith(_SHARED_ATT):
            mapped[f"shared_attention.{key}"] = value
        elif m := _BRANCH.match(key):
            kind, k, level, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            if k >= len(tasks) and level == "0" and len(tasks) == 2:
                continue  # the 2-task network's unused third branch (level 0 only)
            name = MTAN_TASKS[k] if k < len(MTAN_TASKS) else f"task{k}"
            mapped[f"{name}_decoder.{kind}.{level}.{rest}"] = value
        elif m := _HEAD.match(key):
            k = int(m.group(1)) - 1
            name = MTAN_TASKS[k] if 0 <= k < len(MTAN_TASKS) else f"task{k}"
            mapped[f"{name}_decoder.head.{m.group(2)}"] = value
        else:
            mapped[key] = value  # reported as unexpected
    return mapped, extras


def _map_adamt(model, state: dict[str, Any], position: int) -> tuple[dict[str, Any], dict]:
    """The original project's AdaMT-Net keys → crosstask's (module docstring). ``extras["kept"]``: crosstask keys left
    at their initialisation on purpose (the 1-channel normal head)."""
    arch, tasks = model.config.arch, tuple(model.task_order)
    if arch != "adamt-net":
        raise InputError(f"AdaMT-Net weights are --arch adamt-net weights; the model is --arch {arch}")
    present = tuple(t for d, t in ADAMT_DECODERS.items() if any(k.startswith(d + ".") for k in state))
    if present != tasks:
        raise InputError(f"the AdaMT-Net weights predict {','.join(present) or 'nothing'}; the model's tasks are "
                         f"{','.join(tasks)}")  # fmt: skip
    own = model.state_dict()
    mapped: dict[str, Any] = {}
    extras: dict[str, Any] = {"kept": []}
    for key, value in state.items():
        if m := _ADAMT_ENC.match(key):
            block, conv, part, rest = m.groups()  # conv{1,2}.{0: conv, 1: BN} → Sequential indices 0, 1, 3, 4
            mapped[f"encoder.enc{block}.{3 * (int(conv) - 1) + int(part)}.{rest}"] = value
        elif key.startswith("encoder.bottleneck."):
            mapped[key] = value
        elif (m := _ADAMT_DEC.match(key)) and m.group(1) in ADAMT_DECODERS:
            prefix = f"{ADAMT_DECODERS[m.group(1)]}_decoder.blocks.{int(m.group(2)) - 1}"
            if m.group(6):  # W: one map per batch position in the original
                if value.dim() != 4 or not 0 <= position < value.shape[0]:
                    raise InputError(f"{key}: expected one attention map per batch position (B×C×h×w) with "
                                     f"position {position} among them, got shape {tuple(value.shape)}")  # fmt: skip
                mapped[f"{prefix}.weight"] = value[position]
                extras["attention_positions"] = int(value.shape[0])
            else:
                conv, part, rest = m.group(3), m.group(4), m.group(5)
                mapped[f"{prefix}.{'conv' if part == '0' else 'bn'}{conv}.{rest}"] = value
        elif (m := _ADAMT_HEAD.match(key)) and m.group(1) in ADAMT_DECODERS:
            target = f"{ADAMT_DECODERS[m.group(1)]}_decoder.head.weight"
            if m.group(1) == "decoder_normal" and value.shape[0] == 1 and own[target].shape[0] == 3:
                extras["kept"].append(target)  # the original's ±1 "normals": nothing to reproduce
                extras["normal_head_not_loaded"] = (
                    "the original's normal head has 1 output channel (its normalised output is ±1); crosstask's has "
                    "3 and keeps its initialisation: fine-tune it before using the normals"
                )
            else:
                mapped[target] = value
        else:
            mapped[key] = value  # reported as unexpected
    return mapped, extras
