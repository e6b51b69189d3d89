from __future__ import annotations

import itertools

import pytest
import torch

import crosstask_cli as ct
from crosstask_cli.models.encoder import PretrainedWeightsMissing
from crosstask_cli.models.network import count_trainable_parameters

# torchvision ResNet parameter totals minus the ImageNet classifier (fc).
ENCODER = {18: 11_689_512 - 513_000, 34: 21_797_672 - 513_000, 50: 25_557_032 - 2_049_000}
SKIP_CHANNELS = {18: (64, 64, 128, 256, 512), 34: (64, 64, 128, 256, 512), 50: (64, 256, 512, 1024, 2048)}


def conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def decoder(ch: tuple[int, ...], out: int) -> int:
    ins = [ch[4], 128 + ch[3], 128 + ch[2], 128 + ch[1], 128 + ch[0]]
    return sum(conv(c, 128) + 256 + 2 * (conv(128, 128) + 256) for c in ins) + conv(128, out, 1, bias=False)


def ttnet(cin: int, cout: int, bn: bool, wider: bool) -> int:
    c1, c2, c3 = (128, 256, 512) if wider else (64, 128, 256)
    pairs = [
        (cin, c1),
        (c1, c1),
        (c1, c2),
        (c2, c2),
        (c2, c3),
        (c3, c3),
        (c3, c2),
        (c2, c2),
        (2 * c2, c1),
        (c1, c1),
        (2 * c1, c1),
        (c1, c1),
    ]
    return sum(conv(a, b) + (2 * b if bn else 0) for a, b in pairs) + conv(c1, cout, 1, bias=False)


def expected(depth: int, classes: int, bn: bool, wider: bool) -> int:
    ch = SKIP_CHANNELS[depth]
    return (
        ENCODER[depth]
        + decoder(ch, classes)
        + decoder(ch, 1)
        + ttnet(classes, 1, bn, wider)
        + ttnet(1, classes, bn, wider)
    )


def test_formula_reproduces_the_original_counts():
    assert expected(34, 7, False, False) == 31_553_344
    assert expected(18, 7, False, False) == 21_445_184
    assert expected(50, 7, False, False) == 40_412_224
    assert expected(34, 7, True, False) == 31_558_976
    assert expected(34, 7, False, True) == 42_841_664
    assert expected(34, 19, False, False) == 31_562_560


@pytest.mark.parametrize(
    "depth,bn,wider,classes", list(itertools.product((18, 34, 50), (False, True), (False, True), (7, 19)))
)
def test_parameter_count_matches_original(depth, bn, wider, classes):
    model = ct.build_model(enc_layers=depth, num_classes=classes, ttnet_batch_norm=bn, wider_ttnet=wider)
    assert count_trainable_parameters(model) == expected(depth, classes, bn, wider)


@pytest.mark.parametrize("size", [(32, 64), (64, 128), (40, 70), (33, 97)])
def test_output_shapes_including_sizes_not_multiple_of_32(size):
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=7).eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert isinstance(out, ct.Predictions)
    assert out.seg.shape == (2, 7, h, w)
    assert out.depth.shape == (2, 1, h, w)
    assert out.seg_from_depth.shape == (2, 7, h, w)
    assert out.depth_from_seg.shape == (2, 1, h, w)
    # seg_from_depth is a log-probability map
    assert torch.allclose(out.seg_from_depth.exp().sum(1), torch.ones(2, h, w), atol=1e-4)


def test_direct_only_skips_transfer_nets_and_matches_full_forward():
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=7).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        full = model(x)
        direct = model(x, direct_only=True)
    assert direct.seg_from_depth is None and direct.depth_from_seg is None
    assert torch.equal(direct.seg, full.seg) and torch.equal(direct.depth, full.depth)


def test_bad_input_shape_is_a_clear_error():
    model = ct.build_model(enc_layers=18)
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="enc_layers"):
        ct.build_model(enc_layers=20)


def test_pretrained_without_local_weights_names_the_file_and_the_alternative():
    with pytest.raises(PretrainedWeightsMissing) as err:
        ct.build_model(enc_layers=18, pretrained=True)
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "encoder_weights" in msg and "--encoder-weights" in msg


def test_pretrained_loads_from_the_local_torch_cache(tmp_path, monkeypatch):
    import torchvision

    from crosstask_cli.models.encoder import imagenet_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ref = torchvision.models.resnet18(weights=None)
    path = imagenet_weights_path(18)
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    model = ct.build_model(enc_layers=18, pretrained=True)
    assert torch.equal(model.encoder.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


def test_encoder_weights_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = ct.build_model(enc_layers=18, encoder_weights=path)
    assert torch.equal(model.encoder.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.encoder.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    with pytest.raises(ValueError, match="not a ResNet-34 state dict"):
        ct.build_model(enc_layers=34, encoder_weights=path)
    with pytest.raises(FileNotFoundError):
        ct.build_model(enc_layers=18, encoder_weights=tmp_path / "missing.pth")


def test_decoder_head_before_last_upsampling_is_the_same_function():
    """The decoders apply their bias-free 1×1 head before the last bilinear ×2 (cheaper); this must equal the
    original order head(upsample(x))."""
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x, direct_only=True)
        feats = model.encoder(x)
        for decoder, got in ((model.seg_decoder, out.seg), (model.depth_decoder, out.depth)):
            y = decoder.blocks[0](feats[-1])
            for block, skip in zip(decoder.blocks[1:], reversed(feats[:-1]), strict=True):
                y = block(torch.cat((y, skip), 1))
            assert torch.allclose(got, decoder.head(y), atol=1e-6, rtol=1e-5)


def test_channels_last_model_returns_planar_segmentation_logits():
    """The metrics' class-id extraction and the loss reduce over classes plane by plane; a channels_last model
    must still hand them NCHW logits, with the same values as a contiguous-format model."""
    torch.manual_seed(0)
    model = ct.build_model(enc_layers=18, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.seg.is_contiguous() and out.seg_from_depth.is_contiguous()
    for a, b in zip(ref, out, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
