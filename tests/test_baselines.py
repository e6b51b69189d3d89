"""Single-task and plain multi-task variants, DWA and PCGrad, Δm and `crosstask compare`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli
from torch import nn

import crosstask_cli as ct
from crosstask_cli.compare import delta_m
from crosstask_cli.models.network import count_trainable_parameters
from crosstask_cli.weighting import build_weighting


def test_variants_build_only_their_modules():
    seg_only = ct.build_model(enc_layers=18, num_classes=7, tasks=("seg",))
    names = {n for n, _ in seg_only.named_children()}
    assert names == {"encoder", "seg_decoder"}
    depth_only = ct.build_model(enc_layers=18, tasks=("depth",))
    assert {n for n, _ in depth_only.named_children()} == {"encoder", "depth_decoder"}
    plain = ct.build_model(enc_layers=18, transfer=False)
    assert {n for n, _ in plain.named_children()} == {"encoder", "seg_decoder", "depth_decoder"}
    full = ct.build_model(enc_layers=18)
    assert count_trainable_parameters(plain) + count_trainable_parameters(
        full.seg_to_depth
    ) + count_trainable_parameters(full.depth_to_seg) == count_trainable_parameters(full)
    x = torch.randn(1, 3, 32, 64)
    p = seg_only(x)
    assert p.seg.shape == (1, 7, 32, 64) and p.depth is None and p.seg_from_depth is None
    p = plain(x)
    assert p.seg is not None and p.depth is not None and p.seg_from_depth is None and p.depth_from_seg is None


def test_losses_of_the_variants():
    torch.manual_seed(0)
    seg_t, depth_t = torch.randint(0, 3, (2, 8, 8)), torch.rand(2, 1, 8, 8) + 0.1
    full = ct.Predictions(
        torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    )
    none = ct.CrossTaskLoss(3, consistency="none")(full, seg_t, depth_t)
    assert none["tseg"] == 0 and none["tdepth"] == 0
    xtc = ct.CrossTaskLoss(3, consistency="xtc", label_smoothing=0.0)(full, seg_t, depth_t)
    expected_tdepth = (full.depth_from_seg - depth_t).abs().mean()  # all depth valid
    assert xtc["tdepth"].item() == pytest.approx(expected_tdepth.item(), rel=1e-5)
    assert xtc["tseg"].item() == pytest.approx(F.cross_entropy(full.seg_from_depth, seg_t).item(), rel=1e-5)
    seg_only = ct.CrossTaskLoss(3)(ct.Predictions(full.seg, None), seg_t, depth_t)
    assert seg_only["depth"] == 0 and seg_only["seg"] > 0 and seg_only["depth_task"] == 0


def test_xtc_is_the_originals_direct_losses_on_the_transferred_predictions():
    """xtc: transferred depth with the --lp loss and transferred seg with plain cross-entropy, both against the
    ground truth; --tdep-loss and --label-smoothing belong to xtsc and do not apply."""
    torch.manual_seed(0)
    seg_t, depth_t = torch.randint(0, 3, (2, 8, 8)), torch.rand(2, 1, 8, 8) + 0.1
    depth_t[0, 0, :2] = 0  # some invalid depth
    pred = ct.Predictions(
        torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    )
    fn = ct.CrossTaskLoss(3, consistency="xtc", lp="mse", tdep_loss="ssim", label_smoothing=0.3)
    out = fn(pred, seg_t, depth_t)
    valid = depth_t > 0
    per_image = [((pred.depth_from_seg[i] - depth_t[i]).square()[valid[i]]).mean() for i in range(2)]
    assert out["tdepth"].item() == pytest.approx(float(sum(per_image) / 2), rel=1e-5)
    assert out["tseg"].item() == pytest.approx(F.cross_entropy(pred.seg_from_depth, seg_t).item(), rel=1e-5)


def test_xtc_trains_the_transfer_nets_from_ground_truth_only():
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=3)
    pred = model(torch.randn(2, 3, 32, 32))
    loss = ct.CrossTaskLoss(3, consistency="xtc")(
        pred, torch.randint(0, 3, (2, 32, 32)), torch.rand(2, 1, 32, 32) + 0.1
    )
    loss["tdepth"].backward()
    assert model.seg_to_depth.head.weight.grad is not None  # the transfer net learns
    assert model.depth_decoder.head.weight.grad is None  # the target is the ground truth, not the depth decoder


def test_dwa_weights_follow_loss_ratios_and_temperature():
    w = build_weighting("dwa", temperature=2.0)
    assert w.weights() == {"seg_task": 1.0, "depth_task": 1.0}
    w.epoch_end({"seg_task": 2.0, "depth_task": 1.0})
    assert w.weights() == {"seg_task": 1.0, "depth_task": 1.0}  # two epochs of history needed
    w.epoch_end({"seg_task": 1.0, "depth_task": 1.0})  # ratios: seg 0.5 (fast), depth 1.0 (slow)
    e1, e2 = math.exp(0.5 / 2), math.exp(1.0 / 2)
    got = w.weights()
    assert got["seg_task"] == pytest.approx(2 * e1 / (e1 + e2)) and got["depth_task"] == pytest.approx(
        2 * e2 / (e1 + e2)
    )
    assert w.combine({"seg_task": torch.tensor(1.0), "depth_task": torch.tensor(1.0)}).item() == pytest.approx(2.0)
    hot = build_weighting("dwa", temperature=1000.0)
    for losses in ({"seg_task": 2.0, "depth_task": 1.0}, {"seg_task": 1.0, "depth_task": 1.0}):
        hot.epoch_end(losses)
    assert all(v == pytest.approx(1.0, abs=1e-3) for v in hot.weights().values())  # high T → uniform
    state = w.state_dict()
    again = build_weighting("dwa")
    again.load_state_dict(state)
    assert again.weights() == got


def _pcgrad_update(J: torch.Tensor) -> torch.Tensor:
    w = build_weighting("pcgrad").gramian_weights(J.double() @ J.double().T, torch.ones(2, dtype=torch.float64))
    return w.to(J.dtype) @ J


def test_pcgrad_projects_conflicting_gradients_only():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # conflict: g1·g2 = −1
    # by hand: g1 − (g1·g2/‖g2‖²) g2 = (½, ½) and g2 − (g2·g1/‖g1‖²) g1 = (0, 1)
    assert torch.allclose(_pcgrad_update(torch.stack([g1, g2])), torch.tensor([0.5, 1.5]))
    h1, h2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])  # no conflict: the plain sum
    assert torch.allclose(_pcgrad_update(torch.stack([h1, h2])), h1 + h2)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2, bias=False)
        self.head_a, self.head_b = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)

    def shared_parameters(self):
        return list(self.encoder.parameters())


@pytest.mark.parametrize("space", ["features", "encoder"])
def test_pcgrad_weighting_sets_projected_shared_and_plain_specific_gradients(space):
    """In encoder space PCGrad projects the encoder's parameter gradients (crosstask's former implementation,
    checked equal on 200 random gradient pairs when TorchJD's replaced it); the heads keep their own gradients."""
    torch.manual_seed(0)
    model = Toy()
    with (
        torch.no_grad()
    ):  # heads a = (1, 0), b = (1, 1): ∇W L_a·∇W L_b = −3 (a·b) |Σx|² < 0, a conflict by construction
        model.head_a.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.head_b.weight.copy_(torch.tensor([[1.0, 1.0]]))
    w = build_weighting("pcgrad", grad_space=space)
    w.attach(model)
    x = torch.randn(4, 2)
    h = model.encoder(x)
    losses = {"seg_task": model.head_a(h).sum(), "depth_task": -model.head_b(h).sum() * 3}
    ga = torch.autograd.grad(losses["seg_task"], model.encoder.weight, retain_graph=True)[0].flatten()
    gb = torch.autograd.grad(losses["depth_task"], model.encoder.weight, retain_graph=True)[0].flatten()
    head_a_grad = torch.autograd.grad(losses["seg_task"], model.head_a.weight, retain_graph=True)[0]
    w.backward(w.combine(losses), losses, model)
    if space == "encoder":
        assert ga @ gb < 0  # the case is a conflict
        expected = (ga - (ga @ gb) / (gb @ gb) * gb) + (gb - (gb @ ga) / (ga @ ga) * ga)
        assert torch.allclose(model.encoder.weight.grad.flatten(), expected, atol=1e-6)
    else:  # the projection acts on the gradients at the encoder's output; the encoder gets Σ w_t ∇L_t
        wa, wb = w.last.tolist()
        assert torch.allclose(model.encoder.weight.grad.flatten(), wa * ga + wb * gb, atol=1e-5)
    assert torch.allclose(model.head_a.weight.grad, head_a_grad)


def test_delta_m_by_hand():
    seg_base = {"miou": 0.5, "pixel_acc": 0.8}
    depth_base = {"abs_err": 0.1, "rel_err": 0.2}
    run = {"miou": 0.55, "pixel_acc": 0.8, "abs_err": 0.09, "rel_err": 0.26}
    d = delta_m(run, seg_base, depth_base)
    # terms: +10 %, 0, +10 % (lower abs is better), −30 % (higher rel is worse)
    assert d["terms"] == pytest.approx({"miou": 10.0, "pixel_acc": 0.0, "abs_err": 10.0, "rel_err": -30.0})
    assert d["flat"] == pytest.approx(-2.5) and d["per_task"] == pytest.approx((5.0 + -10.0) / 2)
    # with a metric missing the conventions differ: flat over 3 metrics, per task over 2 tasks
    d = delta_m({**run, "pixel_acc": math.nan}, seg_base, depth_base)
    assert d["flat"] == pytest.approx((10 + 10 - 30) / 3) and d["per_task"] == pytest.approx((10 + (10 - 30) / 2) / 2)
    assert math.isnan(delta_m(run, None, None)["flat"])  # no baselines, no Δm


def _eval_json(path, miou, acc, abs_err, rel):
    path.write_text(json.dumps({"protocol": "standard", "split": "val", "num_images": 1,
                                "segmentation": {"miou": miou, "pixel_acc": acc, "per_class_iou": {}},
                                "depth": {"abs_err": abs_err, "rel_err": rel}}))  # fmt: skip
    return path


def test_compare_cli_writes_markdown_csv_and_plot(tmp_path, tiny_run):
    seg = _eval_json(tmp_path / "seg.json", 0.5, 0.8, None, None)
    dep = _eval_json(tmp_path / "depth.json", None, None, 0.1, 0.2)
    mtl = _eval_json(tmp_path / "xtsc.json", 0.55, 0.8, 0.09, 0.26)
    r = run_cli("compare", mtl, tiny_run, "--baseline-seg", seg, "--baseline-depth", dep, "--markdown", tmp_path / "t.md",
                "--csv", tmp_path / "t.csv", "--plot", tmp_path / "t.png")  # fmt: skip
    assert r.exit_code == 0, r.output
    md = (tmp_path / "t.md").read_text()
    assert "| xtsc | 0.5500 | 0.8000 | 0.0900 | 0.2600 | -2.50 | -2.50 |" in md and "positive = better" in md
    assert "tiny" in md  # a run directory is read from its metrics.csv
    assert (
        (tmp_path / "t.csv").read_text().splitlines()[0].startswith("run,miou,pixel_acc,abs_err,rel_err,delta_m_flat")
    )
    import cv2

    assert cv2.imread(str(tmp_path / "t.png")) is not None
    r = run_cli("compare", tmp_path / "missing.json")
    assert r.exit_code == 1 and "neither an eval JSON" in r.output


def test_single_task_run_trains_evaluates_and_predicts(synthetic_raw, tmp_path):
    import matplotlib

    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=1, enc_layers=18,
                                     batch_size=4, workers=0, max_steps_per_epoch=2, tasks=("depth",), weighting="dwa")  # fmt: skip
    assert cfg.loss.consistency == "none"
    ct.train(cfg, run_dir=tmp_path / "run")
    ckpt = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)
    assert ckpt["model_config"]["tasks"] == ["depth"] and not any(k.startswith("seg_decoder") for k in ckpt["model"])
    r = run_cli("eval", "--ckpt", tmp_path / "run/checkpoints/best.pt", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["segmentation"]["miou"] is None and res["depth"]["abs_err"] > 0
    photo = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    r = run_cli("predict", photo, "--ckpt", tmp_path / "run/checkpoints/best.pt", "--out", tmp_path / "p", "--transfer")
    assert r.exit_code == 1 and "has no TaskTransferNets" in r.output  # nothing to transfer: refused, not ignored
    r = run_cli("predict", photo, "--ckpt", tmp_path / "run/checkpoints/best.pt", "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p/grace_hopper_depth.npy").is_file() and not (tmp_path / "p/grace_hopper_seg.png").exists()
    assert np.load(tmp_path / "p/grace_hopper_depth.npy").shape == (600, 512)
    r = run_cli("visualize", "samples", "--data", synthetic_raw, "--ckpt", tmp_path / "run/checkpoints/best.pt", "-n", "2",
                "--out", tmp_path / "grid.png")  # fmt: skip
    assert r.exit_code == 0, r.output
    import cv2

    assert cv2.imread(str(tmp_path / "grid.png")) is not None


def test_plain_multitask_and_pcgrad_run(synthetic_raw, tmp_path):
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", tmp_path / "r", "--height", "32", "--width", "64",
                "--enc-layers", "18", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--max-steps-per-epoch", "2",
                "--consistency", "none", "--weighting", "pcgrad")  # fmt: skip
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "r/checkpoints/last.pt", weights_only=True)
    assert ckpt["model_config"]["transfer"] is False and not any(k.startswith("seg_to_depth") for k in ckpt["model"])
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", tmp_path / "bad", "--tasks", "seg,normals")
    assert r.exit_code == 1 and "--tasks: unknown task(s) normals; known tasks: seg, depth, normal" in r.output
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", tmp_path / "bad", "--tasks", "depth",
                "--select-metric", "miou")  # fmt: skip
    assert r.exit_code == 1 and "--select-metric miou needs the seg task" in r.output
