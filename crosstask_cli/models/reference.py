"""Weights of the reference implementations, loaded into crosstask models.

``source="mtan"``: a state dict saved from MTAN's published SegNet code (Liu et al. 2019; ``model.state_dict()`` of
its SegNet-MTAN or split SegNet, 2 or 3 tasks), whose keys are ``encoder_block…``, ``conv_block_enc…``,
``decoder_block…``, ``conv_block_dec…``, ``encoder_block_att…``, ``decoder_block_att…``, ``encoder_att.K…``,
``decoder_att.K…``, ``pred_taskN…`` and ``logsigma``. MTAN's task K (``pred_task{K+1}``) is seg, depth, normal in
that order. Its 2-task network also holds the level-0 attention modules of a third, unused branch
(``encoder_att.2.0``, ``decoder_att.2.0``: 21,248 parameters); they are skipped. ``logsigma`` (uncertainty
weighting's log variances) is not part of a crosstask model and is returned to the caller.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from crosstask_cli.errors import InputError
from crosstask_cli.models.network import state_dict_mismatch

SOURCES = ("mtan",)
MTAN_TASKS = ("seg", "depth", "normal")  # pred_task1, pred_task2, pred_task3
_SHARED = ("encoder_block.", "conv_block_enc.", "decoder_block.", "conv_block_dec.")
_SHARED_ATT = ("encoder_block_att.", "decoder_block_att.")
_BRANCH = re.compile(r"^(encoder_att|decoder_att)\.(\d+)\.(\d+)\.(.*)$")
_HEAD = re.compile(r"^pred_task(\d+)\.(.*)$")


def load_reference_weights(model: torch.nn.Module, state_dict: dict[str, Any], source: str = "mtan") -> dict:
    """Load ``state_dict`` (saved by the ``source`` implementation) into ``model`` (a CrossTaskNet of the matching
    architecture and tasks); its TaskTransferNets, which the reference lacks, keep their weights. Returns what the
    reference holds beyond the network ({"logsigma": tensor} for MTAN). A file that does not fit the model is one
    :class:`InputError` line naming the first difference."""
    if source not in SOURCES:
        raise InputError(f"unknown reference source {source!r}; choose from {', '.join(SOURCES)}")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise InputError("expected a state dict (a dict of parameter names to tensors)")
    mapped, extras = _map_mtan(model, {k.removeprefix("module."): v for k, v in state_dict.items()})
    own = {k: v for k, v in model.state_dict().items() if not _is_transfer(k, model)}
    mismatch = state_dict_mismatch(own, mapped)
    if mismatch:
        raise InputError(f"not an MTAN {model.config.arch} state dict for tasks {','.join(model.task_order)} "
                         f"({mismatch})")  # fmt: skip
    model.load_state_dict(mapped, strict=False)
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
