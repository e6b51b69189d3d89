from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crosstask_cli as ct
from crosstask_cli.losses import masked_depth_loss, smoothed_cross_entropy, ssim_loss


def depth_pair():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # image 2: no valid pixel
    return pred, target


@pytest.mark.parametrize(
    "kind,per_pixel",
    [
        ("l1", lambda d: abs(d)),
        ("mse", lambda d: d * d),
        ("logl1", lambda d: math.log(1 + abs(d))),
        ("smoothl1", lambda d: 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5),
    ],
)
def test_depth_losses_by_hand(kind, per_pixel):
    pred, target = depth_pair()
    # image 1 valid pixels: diffs −1, +2, +1 ; image 2 contributes 0 ; batch mean over 2 images
    expected = (per_pixel(-1.0) + per_pixel(2.0) + per_pixel(1.0)) / 3 / 2
    got = masked_depth_loss(pred, target, target > 0, kind)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_seg_cross_entropy_ignores_pixels_and_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0] = 255
    loss = ct.CrossTaskLoss(4)(ct.Predictions(logits, torch.zeros(2, 1, 3, 5)), target, torch.zeros(2, 1, 3, 5))
    assert loss["seg"].item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)


def test_label_smoothing_puts_eps_over_c_minus_one_off_target():
    logits = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    logp = F.log_softmax(logits, 1).flatten().tolist()
    eps = 0.3
    label = torch.tensor([[[1]]])
    expected = -((1 - eps) * logp[1] + eps / 2 * logp[0] + eps / 2 * logp[2])
    got = smoothed_cross_entropy(F.log_softmax(logits, 1), label, eps, torch.ones(1, 1, 1, dtype=torch.bool))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_transferred_seg_ce_uses_argmax_of_direct_and_smoothing():
    direct = torch.tensor([[0.1, 3.0, 0.2], [2.0, 0.0, 0.1]]).T.reshape(1, 3, 1, 2)  # argmax: 1, 0
    transferred = torch.tensor([[0.5, 0.2, 0.1], [0.0, 1.0, 0.3]]).T.reshape(1, 3, 1, 2)
    seg_t = torch.tensor([[[0, 255]]])  # second pixel ignored
    eps = 0.2
    fn = ct.CrossTaskLoss(3, tseg_loss="ce", label_smoothing=eps)
    out = fn(
        ct.Predictions(direct, torch.ones(1, 1, 1, 2), transferred, torch.ones(1, 1, 1, 2)),
        seg_t,
        torch.ones(1, 1, 1, 2),
    )
    lp = F.log_softmax(transferred, 1)[0, :, 0, 0].tolist()
    expected = -((1 - eps) * lp[1] + eps / 2 * (lp[0] + lp[2]))
    # the original's reduction: summed over the labelled pixel, divided by both pixels of the batch
    assert out["tseg"].item() == pytest.approx(expected / 2, rel=1e-6)


def _kl_case():
    torch.manual_seed(0)
    direct, transferred = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    seg_t = torch.randint(0, 5, (2, 3, 4))
    seg_t[1, 2] = 255
    d = torch.ones(2, 1, 3, 4)
    return ct.Predictions(direct, d, transferred, d), seg_t, d


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_transferred_seg_kl_is_the_originals_definition(eps):
    pred, seg_t, d = _kl_case()
    out = ct.CrossTaskLoss(5, tseg_loss="kl", label_smoothing=eps)(pred, seg_t, d)
    # q: one-hot of argmax(direct), smoothed to 1−ε on it and ε/(C−1) elsewhere; KL(q ‖ softmax(transferred))
    q = torch.full_like(pred.seg, eps / 4).scatter_(1, pred.seg.argmax(1, keepdim=True), 1 - eps)
    kl = F.kl_div(F.log_softmax(pred.seg_from_depth, 1), q, reduction="none").sum(1)  # 0·log 0 counts 0
    keep = seg_t != 255
    assert out["tseg"].item() == pytest.approx(kl[keep].sum().item() / seg_t.numel(), rel=1e-5)
    if eps == 0:  # with a one-hot target KL and cross-entropy are the same loss
        ce = ct.CrossTaskLoss(5, tseg_loss="ce")(pred, seg_t, d)["tseg"]
        assert out["tseg"].item() == pytest.approx(ce.item(), rel=1e-6)


def test_transferred_seg_soft_kl_distils_the_direct_distribution():
    pred, seg_t, d = _kl_case()
    fn = ct.CrossTaskLoss(5, tseg_loss="soft-kl", label_smoothing=0.5)  # smoothing does not apply to soft-kl
    out = fn(pred, seg_t, d)
    p = F.softmax(pred.seg, 1)
    kl = F.kl_div(F.log_softmax(pred.seg_from_depth, 1), p, reduction="none").sum(1)
    keep = seg_t != 255
    assert out["tseg"].item() == pytest.approx(kl[keep].sum().item() / seg_t.numel(), rel=1e-5)


def _ssim_reference(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    x, y = x * valid, y * valid
    c1, c2 = 0.01**2, 0.03**2
    total = 0.0
    for i in range(x.shape[0] - 2):
        for j in range(x.shape[1] - 2):
            a, b = x[i : i + 3, j : j + 3].ravel(), y[i : i + 3, j : j + 3].ravel()
            ma, mb = a.mean(), b.mean()
            va, vb, cov = (a * a).mean() - ma**2, (b * b).mean() - mb**2, (a * b).mean() - ma * mb
            s = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            total += min(max((1 - s) / 2, 0), 1)
    return total / valid.sum()


def test_ssim_loss_against_a_loop_reference():
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 7)), rng.random((6, 7))
    valid = rng.random((6, 7)) > 0.3
    got = ssim_loss(
        torch.tensor(x).view(1, 1, 6, 7), torch.tensor(y).view(1, 1, 6, 7), torch.tensor(valid).view(1, 1, 6, 7)
    )
    assert got.item() == pytest.approx(_ssim_reference(x, y, valid), rel=1e-6)
    same = ssim_loss(
        torch.tensor(x).view(1, 1, 6, 7), torch.tensor(x).view(1, 1, 6, 7), torch.ones(1, 1, 6, 7, dtype=torch.bool)
    )
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_task_grouping_alpha_gamma():
    torch.manual_seed(0)
    pred = ct.Predictions(
        torch.randn(1, 3, 4, 4), torch.rand(1, 1, 4, 4), torch.randn(1, 3, 4, 4), torch.rand(1, 1, 4, 4)
    )
    fn = ct.CrossTaskLoss(3, alpha=0.3, gamma=0.2)
    out = fn(pred, torch.randint(0, 3, (1, 4, 4)), torch.rand(1, 1, 4, 4) + 0.1)
    assert set(out) == {"seg", "depth", "tseg", "tdepth", "seg_task", "depth_task"}
    assert out["seg_task"].item() == pytest.approx(0.7 * out["seg"].item() + 0.3 * out["tdepth"].item(), rel=1e-6)
    assert out["depth_task"].item() == pytest.approx(0.8 * out["depth"].item() + 0.2 * out["tseg"].item(), rel=1e-6)


def _grad_modules(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {
        name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
        for name, mod in model.named_children()
    }


@pytest.mark.parametrize("tdep,tseg", [("l1", "ce"), ("ssim", "kl")])
def test_transferred_losses_are_detached_from_their_targets(tdep, tseg):
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=3)
    pred = model(torch.randn(2, 3, 32, 32))
    seg_t, depth_t = torch.randint(0, 3, (2, 32, 32)), torch.rand(2, 1, 32, 32) + 0.1
    out = ct.CrossTaskLoss(3, tdep_loss=tdep, tseg_loss=tseg)(pred, seg_t, depth_t)
    g = _grad_modules(model, out["tdepth"])  # seg → depth: flows into seg decoder, not depth decoder
    assert g["seg_to_depth"] and g["seg_decoder"] and not g["depth_decoder"] and not g["depth_to_seg"]
    g = _grad_modules(model, out["tseg"])  # depth → seg: flows into depth decoder, not seg decoder
    assert g["depth_to_seg"] and g["depth_decoder"] and not g["seg_decoder"] and not g["seg_to_depth"]


def test_no_valid_depth_gives_finite_losses_and_inputs_are_not_modified():
    torch.manual_seed(0)
    pred = ct.Predictions(
        torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    )
    seg_t = torch.full((2, 8, 8), 255)
    depth_t = torch.zeros(2, 1, 8, 8)
    copies = [t.clone() for t in (*pred, seg_t, depth_t)]
    for tdep in ("l1", "ssim"):
        for tseg in ("ce", "kl", "soft-kl"):
            for lp in ("l1", "mse", "logl1", "smoothl1"):
                out = ct.CrossTaskLoss(3, lp=lp, tdep_loss=tdep, tseg_loss=tseg, label_smoothing=0.1)(
                    pred, seg_t, depth_t
                )
                assert all(torch.isfinite(v) for v in out.values())
                assert out["depth"].item() == 0.0 and out["seg"].item() == 0.0
    for a, b in zip((*pred, seg_t, depth_t), copies, strict=True):
        assert torch.equal(a, b)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="lp"):
        ct.CrossTaskLoss(3, lp="l3")
    with pytest.raises(ValueError, match="tseg_loss"):
        ct.CrossTaskLoss(3, tseg_loss="cross")
