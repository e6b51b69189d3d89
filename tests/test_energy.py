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


# --- how well energy predicts error ------------------------------------------------------------------------------


def _brute_sparsification(energy, error, steps):
    """Remove the k highest energies one fraction at a time (ties: the earlier item first), average the rest."""
    n = len(error)
    order = sorted(range(n), key=lambda i: (-energy[i], i))
    out = []
    for step in range(steps):
        removed = set(order[: int(math.floor(step / steps * n))])
        rest = [error[i] for i in range(n) if i not in removed]
        out.append(sum(rest) / len(rest))
    return out


def test_sparsification_equals_a_brute_force_version():
    from crosstask_cli.energy import sparsification

    g = torch.Generator().manual_seed(0)
    energy = torch.randint(0, 8, (37,), generator=g).double().tolist()  # many ties
    error = torch.rand(37, generator=g, dtype=torch.float64).tolist()
    res = sparsification(energy, error, steps=10)
    assert res["curve"] == pytest.approx(_brute_sparsification(energy, error, 10), abs=1e-12)
    assert res["oracle"] == pytest.approx(_brute_sparsification(error, error, 10), abs=1e-12)
    assert res["ausc"] == pytest.approx(sum(res["curve"]) / 10) and res["random"] == pytest.approx(sum(error) / 37)
    assert res["ause"] == pytest.approx(res["ausc"] - res["oracle_ausc"]) and res["ause"] >= 0
    perfect = sparsification(error, error, steps=10)  # energy that is the error itself: the oracle
    assert perfect["ause"] == pytest.approx(0.0, abs=1e-12)
    nan = sparsification([1.0, float("nan"), 2.0], [0.5, 0.1, float("nan")], steps=4)
    assert nan["count"] == 1 and nan["curve"] == [0.5] * 4


def test_spearman_and_auroc_against_scipy():
    import numpy as np
    from scipy.stats import mannwhitneyu, spearmanr

    from crosstask_cli.energy import auroc, spearman

    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.normal(0, 2, 40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))  # constant: undefined
    clean, corrupted = rng.integers(0, 6, 30).astype(float), rng.integers(2, 9, 25).astype(float)
    u = mannwhitneyu(corrupted, clean).statistic
    assert auroc(clean, corrupted) == pytest.approx(u / (30 * 25), abs=1e-12)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5


def test_consistency_report_per_image_values_by_hand():
    """Two images of 1×4 pixels, 2 classes: per-image mIoU, abs err over valid pixels, energies, and the
    transferred predictions' own metrics."""
    from crosstask_cli.energy import ConsistencyReport

    p = torch.tensor([0.9, 0.1])
    logit = lambda probs: torch.log(torch.tensor(probs)).T.reshape(2, 1, -1)  # noqa: E731  (pixels → 2×1×W)
    seg = torch.stack([logit([p.tolist()] * 2 + [[0.2, 0.8]] * 2), logit([p.tolist()] * 4)])  # 2×2×1×4
    seg_t = torch.tensor([[[0, 0, 1, 0]], [[0, 1, 255, 255]]])
    depth = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 1, 4)
    depth_t = torch.tensor([[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 1, 4)
    pred = Predictions(seg, depth, seg.flip(1), depth + 0.5)
    r = ConsistencyReport(2, pixel_stride=1)
    r.update(pred, seg_t, depth_t)
    img = r.per_image()
    # image 0: pred 0,0,1,1 vs target 0,0,1,0 → IoU0 = 2/3, IoU1 = 1/2; image 1: pred 0,0 vs 0,1 → IoU0 = ½, IoU1 = 0
    assert img[:, 3].tolist() == pytest.approx([(2 / 3 + 1 / 2) / 2, 1 / 4])
    assert img[0, 4] == pytest.approx((0 + 1 + 2) / 3) and math.isnan(img[1, 4])  # no valid depth: NaN
    assert img[:, 1].tolist() == pytest.approx([0.5, 0.0])  # depth energy over valid pixels (none in image 1)
    res = r.compute()
    assert res["mean"]["depth"] == pytest.approx(0.25)
    assert res["transferred"]["depth_from_seg"]["abs_err"] == pytest.approx((0.5 + 1.5 + 2.5) / 3)
    assert res["sparsification"]["pixels_seg_error_by_seg_energy"]["count"] == 6  # labelled pixels
    assert res["sparsification"]["pixels_abs_err_by_depth_energy"]["count"] == 3  # valid pixels


def test_corruptions_are_deterministic_and_change_the_image():
    import numpy as np

    from crosstask_cli.data.corruptions import KINDS, Corruption
    from crosstask_cli.errors import ConfigError

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    for kind in KINDS:
        mild, strong = Corruption(kind, 1), Corruption(kind, 5)
        a, b = mild(image, 3), mild(image, 3)
        assert a.dtype == np.uint8 and a.shape == image.shape and np.array_equal(a, b), kind
        d_mild = np.abs(a.astype(int) - image).mean()
        d_strong = np.abs(strong(image, 3).astype(int) - image).mean()
        assert 0 < d_mild < d_strong, kind
    assert Corruption.parse("blur") == Corruption("blur", 3) and Corruption.parse("JPEG:5") == Corruption("jpeg", 5)
    for bad in ("snow", "noise:0", "noise:6", "noise:x"):
        with pytest.raises(ConfigError):
            Corruption.parse(bad)


def test_cli_eval_reports_energy_and_the_corruption_check(tiny_run, synthetic_prepared, tmp_path):
    import json

    from helpers import run_cli

    ckpt = tiny_run / "checkpoints/best.pt"
    report, png = tmp_path / "e.json", tmp_path / "sparsification.png"
    r = run_cli("eval", "--ckpt", ckpt, "--data", synthetic_prepared, "--corrupt", "noise:5", "--json", report,
                "--sparsification-png", png, "--amp", "off")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "consistency energy" in r.output and "AUROC" in r.output
    assert "images corrupted: noise:5" in " ".join(r.output.split())  # the table's metrics are the corrupted ones
    res = json.loads(report.read_text())
    e, c = res["energy"], res["corruption"]
    assert len(e["per_image"]["combined"]) == res["num_images"] == 4
    assert e["mean"]["combined"] == pytest.approx(sum(e["per_image"]["combined"]) / 4)
    assert 0 <= e["transferred"]["seg_from_depth"]["miou"] <= 1 and e["transferred"]["depth_from_seg"]["abs_err"] > 0
    assert set(e["sparsification"]) == {"pixels_seg_error_by_seg_energy", "pixels_abs_err_by_depth_energy",
                                        "images_1_minus_miou_by_combined", "images_abs_err_by_combined"}  # fmt: skip
    assert (c["kind"], c["severity"]) == ("noise", 5) and 0 <= c["auroc"]["combined"] <= 1
    assert c["corrupted"]["miou"] == res["segmentation"]["miou"] and c["clean"]["miou"] != c["corrupted"]["miou"]
    assert png.stat().st_size > 10_000
    # a model without TaskTransferNets has no energy: not reported by default, a clear error when asked for
    r = run_cli("eval", "--ckpt", ckpt, "--data", synthetic_prepared, "--no-energy", "--json", report)
    assert r.exit_code == 0 and "energy" not in json.loads(report.read_text())
    r = run_cli("eval", "--ckpt", ckpt, "--data", synthetic_prepared, "--corrupt", "snow")
    assert r.exit_code == 1 and "noise, blur, fog, brightness, jpeg" in r.output


def test_eval_energy_refuses_models_without_transfer_nets(synthetic_prepared):
    from crosstask_cli.engine.evaluator import evaluate
    from crosstask_cli.errors import ConfigError
    from crosstask_cli.models.network import build_model

    for kw in ({"transfer": False}, {"tasks": ("seg",)}):
        model = build_model(enc_layers=18, num_classes=7, **kw)
        with pytest.raises(ConfigError, match="needs a model with both tasks and TaskTransferNets"):
            evaluate(model, synthetic_prepared, energy=True)
