"""CrossTaskNet computes the original method's function: golden outputs from an independent reference forward.

The reference below is written from the architecture description (README "Differences from the original", docs/architecture.md), in float64, with functional ops
and its own bilinear ×2 (``align_corners=True``) as interpolation matrices, so it shares no code with
``crosstask_cli.models``. Every state-dict entry is filled deterministically, so the comparison covers every
weight, bias and BatchNorm statistic, in eval mode (running statistics) and train mode (batch statistics).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

import crosstask_cli as ct


def fill_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled values for every entry (weights ~ 1/sqrt(fan-in), variances > 0)."""
    state = {}
    for i, (name, t) in enumerate(model.state_dict().items()):
        if not t.is_floating_point():
            state[name] = t.clone()
            continue
        phase = torch.arange(t.numel(), dtype=torch.float64).view(t.shape) * 0.731 + i * 1.37
        wave = torch.sin(phase)
        if name.endswith("running_var"):
            v = 1.0 + 0.5 * wave.square()
        elif name.endswith("running_mean") or name.endswith("bias"):
            v = 0.1 * wave
        elif t.ndim == 1:  # BatchNorm weight
            v = 1.0 + 0.2 * wave
        else:  # convolution weight
            fan_in = t[0].numel()
            v = wave * math.sqrt(3.0 / fan_in)
        state[name] = v.to(t.dtype)
    return state


def up2_align_corners(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 with align_corners=True: output i samples input position i·(n−1)/(2n−1)."""

    def matrix(n: int) -> torch.Tensor:
        m = torch.zeros(2 * n, n, dtype=x.dtype)
        for i in range(2 * n):
            pos = i * (n - 1) / (2 * n - 1) if n > 1 else 0.0
            lo = min(int(math.floor(pos)), n - 1)
            hi = min(lo + 1, n - 1)
            frac = pos - lo
            m[i, lo] += 1 - frac
            m[i, hi] += frac
        return m

    mh, mw = matrix(x.shape[-2]), matrix(x.shape[-1])
    return torch.einsum("ih,bchw,jw->bcij", mh, x, mw)


def bn(x: torch.Tensor, sd: dict, prefix: str, training: bool) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"].clone(),
        sd[f"{prefix}.running_var"].clone(),
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=training,
        eps=1e-5,
    )


def reference_encoder(x: torch.Tensor, sd: dict, depth: int, training: bool) -> list[torch.Tensor]:
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None).double()
    enc = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    net.load_state_dict(enc, strict=False)
    net.train(training)
    f0 = F.relu(bn(F.conv2d(x, sd["encoder.conv1.weight"], stride=2, padding=3), sd, "encoder.bn1", training))
    f1 = net.layer1(F.max_pool2d(f0, 3, 2, 1))
    f2 = net.layer2(f1)
    f3 = net.layer3(f2)
    f4 = net.layer4(f3)
    return [f0, f1, f2, f3, f4]


def reference_decoder(features: list[torch.Tensor], sd: dict, prefix: str, training: bool) -> torch.Tensor:
    """Five blocks of 3×(conv3×3, BN, ReLU) + bilinear ×2; skips concatenated; 1×1 head after the last upsampling."""

    def block(x: torch.Tensor, b: int) -> torch.Tensor:
        for c in range(3):
            p = f"{prefix}.blocks.{b}.convs.{c}"
            x = F.conv2d(x, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], padding=1)
            x = F.relu(bn(x, sd, f"{p}.1", training))
        return up2_align_corners(x)

    x = block(features[4], 0)
    for b, skip in zip(range(1, 5), (features[3], features[2], features[1], features[0]), strict=True):
        x = block(torch.cat((x, skip), 1), b)
    return F.conv2d(x, sd[f"{prefix}.head.weight"])


def reference_ttnet(x: torch.Tensor, sd: dict, prefix: str, bn_on: bool, log_softmax_in: bool, training: bool):
    def double_conv(y: torch.Tensor, name: str) -> torch.Tensor:
        i = 0
        for _ in range(2):
            y = F.conv2d(y, sd[f"{prefix}.{name}.{i}.weight"], sd[f"{prefix}.{name}.{i}.bias"], padding=1)
            i += 1
            if bn_on:
                y = bn(y, sd, f"{prefix}.{name}.{i}", training)
                i += 1
            y = F.relu(y)
            i += 1
        return y

    if log_softmax_in:
        x = F.log_softmax(x, 1)
    e1 = F.max_pool2d(double_conv(x, "down1"), 2)
    e2 = F.max_pool2d(double_conv(e1, "down2"), 2)
    e3 = F.max_pool2d(double_conv(e2, "down3"), 2)
    y = double_conv(up2_align_corners(e3), "up1")
    y = double_conv(up2_align_corners(torch.cat((y, e2), 1)), "up2")
    y = double_conv(up2_align_corners(torch.cat((y, e1), 1)), "up3")
    y = F.conv2d(y, sd[f"{prefix}.head.weight"])
    return F.log_softmax(y, 1) if y.shape[1] > 1 else y


def reference_forward(x, sd, depth, bn_on, training):
    features = reference_encoder(x, sd, depth, training)
    seg = reference_decoder(features, sd, "seg_decoder", training)
    dep = reference_decoder(features, sd, "depth_decoder", training)
    seg_from_depth = reference_ttnet(dep, sd, "depth_to_seg", bn_on, False, training)
    depth_from_seg = reference_ttnet(seg, sd, "seg_to_depth", bn_on, True, training)
    return seg, dep, seg_from_depth, depth_from_seg


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("ttnet_bn", [False, True], ids=["plain", "bn"])
def test_forward_equals_independent_reference(training, ttnet_bn):
    model = ct.build_model(enc_layers=18, num_classes=5, ttnet_batch_norm=ttnet_bn).double()
    state = fill_state_dict(model)
    model.load_state_dict(state)
    model.train(training)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 96, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        want = reference_forward(x, state, 18, ttnet_bn, training)
    for name, g, w in zip(("seg", "depth", "seg_from_depth", "depth_from_seg"), got, want, strict=True):
        assert g.shape == w.shape, name
        # A decoder with align_corners=False differs by ~0.1–1 here; float64 agreement is ~1e-12.
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9), f"{name}: max |Δ| {float((g - w).abs().max()):.3g}"


def test_reference_upsampling_is_align_corners_true():
    x = torch.arange(6, dtype=torch.float64).view(1, 1, 2, 3)
    up = up2_align_corners(x)
    assert up[0, 0, 0].tolist() == pytest.approx([0, 0.4, 0.8, 1.2, 1.6, 2])  # corners kept, evenly spaced
    assert up[0, 0, :, 0].tolist() == pytest.approx([0, 1, 2, 3])


def conv_modules(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_decoders_and_transfer_nets_start_xavier_normal_with_zero_bias():
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=7, ttnet_batch_norm=True)
    parts = [model.seg_decoder, model.depth_decoder, model.seg_to_depth, model.depth_to_seg]
    for part in parts:
        for conv in conv_modules(part):
            w = conv.weight.detach().double()
            fan_in = w[0].numel()
            fan_out = w.shape[0] * w[0, 0].numel()
            std = math.sqrt(2.0 / (fan_in + fan_out))
            n = w.numel()
            # Xavier-normal: mean 0, std sqrt(2/(fan_in+fan_out)); kaiming-uniform (PyTorch's default) has a std
            # of sqrt(1/(3·fan_in)), which differs by more than these sampling tolerances for every layer here.
            assert abs(float(w.mean())) < 5 * std / math.sqrt(n)
            assert float(w.std()) == pytest.approx(std, rel=max(0.05, 6 / math.sqrt(2 * n)))
            if conv.bias is not None:
                assert torch.count_nonzero(conv.bias) == 0
        for norm in (m for m in part.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_encoder_keeps_torchvision_initialisation():
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=7)
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    ours = model.encoder.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(ours[k], v), k


def test_checkpoints_of_crosstask_0_1_keep_their_decoder_function(tmp_path):
    """0.1.0 checkpoints have no decoder_align_corners key and were trained with align_corners=False: loading them
    must keep that function, while new checkpoints record True."""
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from crosstask_cli.models.network import CrossTaskNet, ModelConfig

    torch.manual_seed(0)
    old = CrossTaskNet(ModelConfig(enc_layers=18, num_classes=3, decoder_align_corners=False)).eval()
    config = old.config.to_dict()
    del config["decoder_align_corners"]
    save_checkpoint(tmp_path / "old.pt", {"model_config": config, "dataset": {}, "model": old.state_dict()})
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).seg, old(x).seg)
    assert not loaded.seg_decoder.align_corners
    assert ct.build_model(enc_layers=18).config.to_dict()["decoder_align_corners"] is True
