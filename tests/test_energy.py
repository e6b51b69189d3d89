"""Consistency energy: the definitions against hand computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from crosstask_cli.energy import energy_maps, image_energies
from crosstask_cli.models.network import Predictions


def _pred() -> Predictions:
    # one image of 1×2 pixels, two classes
    seg = torch.log(torch.tensor([[[[0.5, 0.9]], [[0.5, 0.1]]]]))  # direct: p = (½, ½) and (0.9, 0.1)
    seg_from_depth = torch.log(torch.tensor([[[[0.25, 0.9]], [[0.75, 0.1]]]]))  # transferred q
    depth = torch.tensor([[[[2.0, 1.0]]]])
    depth_from_seg = torch.tensor([[[[1.5, 1.0]]]])
    return Predictions(seg, depth, seg_from_depth, depth_from_seg)


def test_energy_maps_by_hand():
    maps = energy_maps(_pred())
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(p ‖ q) at pixel 0; pixel 1: p = q
    assert maps.seg.shape == (1, 1, 2)
    assert maps.seg[0, 0].tolist() == pytest.approx([kl0, 0.0], abs=1e-6)
    assert maps.depth[0, 0].tolist() == pytest.approx([0.5, 0.0])
    assert maps.combined[0, 0].tolist() == pytest.approx([0.5 * kl0 + 0.25, 0.0], abs=1e-6)
    weighted = energy_maps(_pred(), seg_weight=1.0, depth_weight=0.0)
    assert torch.allclose(weighted.combined, weighted.seg)


def test_image_energies_over_all_or_valid_pixels():
    maps = energy_maps(_pred())
    kl0 = 0.5 * math.log(2.0) + 0.5 * math.log(2 / 3)
    e = image_energies(maps)
    assert e["seg"].tolist() == pytest.approx([kl0 / 2], abs=1e-6)
    assert e["depth"].tolist() == pytest.approx([0.25])  # all pixels
    assert e["combined"].tolist() == pytest.approx([0.5 * kl0 / 2 + 0.5 * 0.25], abs=1e-6)
    valid = torch.tensor([[[[False, True]]]])
    assert image_energies(maps, valid)["depth"].tolist() == pytest.approx([0.0])  # only the agreeing pixel
    none = torch.zeros(1, 1, 1, 2, dtype=torch.bool)
    assert image_energies(maps, none)["depth"].tolist() == [0.0]


def test_energy_needs_both_tasks_and_transfer_nets():
    p = _pred()
    for missing in (Predictions(p.seg, p.depth), Predictions(p.seg, None), Predictions(None, p.depth)):
        with pytest.raises(ValueError, match="needs a model with both tasks and TaskTransferNets"):
            energy_maps(missing)
