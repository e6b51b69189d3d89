"""Consistency energy: how much the direct and the transferred predictions of one image disagree, per pixel.

It needs no labels (the original project's analysis script computes it; Zamir et al., CVPR 2020, show that such
energy rises with prediction error). Definitions, in one place:

- segmentation, per pixel: KL(softmax(direct) ‖ softmax(transferred)) = Σ_c p_c·(log p_c − log q_c), in nats, with p
  from the direct logits and q from the depth→seg TaskTransferNet;
- depth, per pixel: |direct − transferred| (seg→depth TaskTransferNet), in the dataset's depth units;
- combined, per pixel: ``seg_weight``·seg + ``depth_weight``·depth (½ and ½, the original's weights).

Per-image energies are means over pixels. Depth energy is averaged over **all** pixels by default, as prediction
has no depth targets; :func:`image_energies` averages over a ``valid`` mask instead when one is given (evaluation
passes the valid-depth mask, so that the energy and the depth error cover the same pixels). Computed in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.network import Predictions

SEG_WEIGHT = 0.5
DEPTH_WEIGHT = 0.5
NEEDS_BOTH = (
    "consistency energy compares the direct predictions with the TaskTransferNets' ones; it needs a model with "
    "both tasks and TaskTransferNets (trained with --consistency xtsc or xtc)"
)


@dataclass(frozen=True)
class EnergyMaps:
    """Per-pixel energies, each B×H×W float32: ``seg`` (nats), ``depth`` (depth units), ``combined``; and the
    weights ``combined`` was made with."""

    seg: torch.Tensor
    depth: torch.Tensor
    combined: torch.Tensor
    seg_weight: float = SEG_WEIGHT
    depth_weight: float = DEPTH_WEIGHT


def energy_maps(pred: Predictions, seg_weight: float = SEG_WEIGHT, depth_weight: float = DEPTH_WEIGHT) -> EnergyMaps:
    """The per-pixel energies of a full forward pass (``pred`` with all four fields)."""
    if any(t is None for t in pred):
        raise ConfigError(NEEDS_BOTH)
    log_p = F.log_softmax(pred.seg.float(), dim=1)
    log_q = F.log_softmax(pred.seg_from_depth.float(), dim=1)
    seg = (log_p.exp() * (log_p - log_q)).sum(1).clamp(min=0)  # ≥ 0 in exact arithmetic; rounding can dip below
    depth = (pred.depth.float() - pred.depth_from_seg.float()).abs().squeeze(1)
    return EnergyMaps(seg, depth, seg_weight * seg + depth_weight * depth, seg_weight, depth_weight)


def image_energies(maps: EnergyMaps, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image energies (each of shape B): ``seg`` = mean over pixels, ``depth`` = mean over all pixels or over
    ``valid`` (B×H×W or B×1×H×W bool; an image without valid pixels gets 0), ``combined`` = the weighted sum of
    those two means (with the weights the maps were made with)."""
    seg = maps.seg.flatten(1).mean(1)
    if valid is None:
        depth = maps.depth.flatten(1).mean(1)
    else:
        mask = valid.reshape(maps.depth.shape).to(maps.depth.dtype)
        depth = (maps.depth * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
    return {"seg": seg, "depth": depth, "combined": maps.seg_weight * seg + maps.depth_weight * depth}
