"""The baselines' networks compute their references' functions.

SegNet-MTAN and the split SegNet: a state dict in MTAN's own layout (keys and shapes written here from the
architecture description in ``shared/reference/baselines-facts.md``) is loaded with ``load_reference_weights`` and
the crosstask model's outputs are compared with an independent functional forward of that dict (float64; eval mode
with running statistics and train mode with batch statistics). AdaMT-Net: the same comparison against a functional
forward of the crosstask state dict, and the fixed defects (one attention map for every batch position, a 3-channel
normal head). Every entry is filled deterministically, so each weight, bias and statistic is covered.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_model_function import up2_align_corners

import crosstask_cli as ct
from crosstask_cli.errors import InputError
from crosstask_cli.models.network import count_trainable_parameters

F_ = (64, 128, 256, 512, 512)
TASK_CHANNELS = {"seg": 13, "depth": 1, "normal": 3}


# --- MTAN's state dict layout ------------------------------------------------------------------------------------
def _block(sd: dict, prefix: str, a: int, b: int) -> None:
    sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"] = (b, a, 3, 3), (b,)
    _bn(sd, f"{prefix}.1", b)


def _bn(sd: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{prefix}.{name}"] = (c,)
    sd[f"{prefix}.num_batches_tracked"] = ()


def _att(sd: dict, prefix: str, a: int, b: int, c: int) -> None:
    sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"] = (b, a, 1, 1), (b,)
    _bn(sd, f"{prefix}.1", b)
    sd[f"{prefix}.3.weight"], sd[f"{prefix}.3.bias"] = (c, b, 1, 1), (c,)
    _bn(sd, f"{prefix}.4", c)


def mtan_shapes(tasks: int, attention: bool = True) -> dict[str, tuple]:
    """Key → shape of MTAN's SegNet state dict (``tasks`` = 2: seg 7 classes, depth; 3: seg 13, depth, normal)."""
    f, sd = F_, {}
    for i in range(5):
        _block(sd, f"encoder_block.{i}", 3 if i == 0 else f[i - 1], f[i])
        _block(sd, f"decoder_block.{i}", f[0] if i == 0 else f[i], f[0] if i == 0 else f[i - 1])
        for kind, c in (("conv_block_enc", f[i]), ("conv_block_dec", f[max(i - 1, 0)])):
            if i < 2:
                _block(sd, f"{kind}.{i}", c, c)
            else:
                _block(sd, f"{kind}.{i}.0", c, c)
                _block(sd, f"{kind}.{i}.1", c, c)
    if attention:
        for i, (a, b) in enumerate(((64, 128), (128, 256), (256, 512), (512, 512), (512, 512))):
            _block(sd, f"encoder_block_att.{i}", a, b)
        for i, (a, b) in enumerate(((64, 64), (128, 64), (256, 128), (512, 256), (512, 512))):
            _block(sd, f"decoder_block_att.{i}", a, b)
        for t in range(tasks):
            _att(sd, f"encoder_att.{t}.0", 64, 64, 64)
            _att(sd, f"decoder_att.{t}.0", 128, 64, 64)
            for i in range(1, 5):
                _att(sd, f"encoder_att.{t}.{i}", 2 * f[i], f[i], f[i])
                _att(sd, f"decoder_att.{t}.{i}", f[i] + f[i - 1], f[i - 1], f[i - 1])
        if tasks == 2:  # MTAN's 2-task network builds level 0 of a third branch it never uses
            _att(sd, "encoder_att.2.0", 64, 64, 64)
            _att(sd, "decoder_att.2.0", 128, 64, 64)
    channels = (7, 1) if tasks == 2 else (13, 1, 3)
    for k, c in enumerate(channels, start=1):
        sd[f"pred_task{k}.0.weight"], sd[f"pred_task{k}.0.bias"] = (64, 64, 3, 3), (64,)
        sd[f"pred_task{k}.1.weight"], sd[f"pred_task{k}.1.bias"] = (c, 64, 1, 1), (c,)
    sd["logsigma"] = (3,)
    return sd


def fill(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled values (weights ~ 1/sqrt(fan-in), BN weights near 1, variances > 0)."""
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(5)
            continue
        n = math.prod(shape)
        wave = torch.sin(torch.arange(n, dtype=torch.float64).view(shape) * 0.731 + i * 1.37)
        if name.endswith("running_var"):
            v = 1.0 + 0.5 * wave.square()
        elif name.endswith(("running_mean", "bias")) or name == "logsigma":
            v = 0.1 * wave
        elif len(shape) == 1:
            v = 1.0 + 0.2 * wave
        else:
            v = wave * math.sqrt(3.0 / math.prod(shape[1:]))
        out[name] = v.float()
    return out


# --- the reference forward, from the description ------------------------------------------------------------------
class Ref:
    def __init__(self, sd: dict[str, torch.Tensor], train: bool) -> None:
        self.sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
        self.train = train

    def conv(self, x, p, padding):
        return F.conv2d(x, self.sd[f"{p}.weight"], self.sd.get(f"{p}.bias"), padding=padding)

    def bn(self, x, p):
        s = self.sd
        return F.batch_norm(x, s[f"{p}.running_mean"].clone(), s[f"{p}.running_var"].clone(), s[f"{p}.weight"],
                            s[f"{p}.bias"], training=self.train, eps=1e-5)  # fmt: skip

    def block(self, x, p):
        return torch.relu(self.bn(self.conv(x, f"{p}.0", 1), f"{p}.1"))

    def blocks(self, x, p, level):
        return self.block(x, p) if level < 2 else self.block(self.block(x, f"{p}.0"), f"{p}.1")

    def att(self, x, p):
        h = torch.relu(self.bn(self.conv(x, f"{p}.0", 0), f"{p}.1"))
        return torch.sigmoid(self.bn(self.conv(h, f"{p}.3", 0), f"{p}.4"))

    def forward(self, x, tasks: int, attention: bool = True) -> list[torch.Tensor]:
        e0, e1, idx, u, d1 = [], [], [], [], []
        h = x
        for i in range(5):
            e0.append(self.block(h, f"encoder_block.{i}"))
            e1.append(self.blocks(e0[i], f"conv_block_enc.{i}", i))
            h, ind = F.max_pool2d(e1[i], 2, 2, return_indices=True)
            idx.append(ind)
        for j in range(5):
            L = 4 - j
            u.append(F.max_unpool2d(h, idx[L], 2, 2))
            h = self.blocks(self.block(u[j], f"decoder_block.{L}"), f"conv_block_dec.{L}", L)
            d1.append(h)
        outs = []
        for t in range(tasks):
            b = d1[4]
            if attention:
                a = None
                for i in range(5):
                    m = self.att(e0[0] if i == 0 else torch.cat((e0[i], a), 1), f"encoder_att.{t}.{i}")
                    a = F.max_pool2d(self.block(m * e1[i], f"encoder_block_att.{i}"), 2, 2)
                b = a
                for j in range(5):
                    L = 4 - j
                    v = self.block(up2_align_corners(b), f"decoder_block_att.{L}")
                    b = self.att(torch.cat((u[j], v), 1), f"decoder_att.{t}.{L}") * d1[j]
            y = self.conv(self.conv(b, f"pred_task{t + 1}.0", 1), f"pred_task{t + 1}.1", 0)
            if t == 0:
                y = F.log_softmax(y, 1)
            elif t == 2:
                y = y / y.norm(p=2, dim=1, keepdim=True)
            outs.append(y)
        return outs


def _image(h: int = 64, w: int = 96, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)


def _mtan_model(arch: str, tasks: int, transfer: bool = False):
    names = ("seg", "depth", "normal")[:tasks]
    return ct.build_model(arch=arch, num_classes=7 if tasks == 2 else 13, tasks=names, transfer=transfer)


@pytest.mark.parametrize("arch,tasks", [("segnet-mtan", 3), ("segnet-mtan", 2), ("segnet", 3)])
@pytest.mark.parametrize("train", [False, True])
def test_mtan_weights_give_mtans_outputs(arch, tasks, train):
    attention = arch == "segnet-mtan"
    sd = fill(mtan_shapes(tasks, attention))
    model = _mtan_model(arch, tasks)
    extras = ct.load_reference_weights(model, sd, source="mtan")
    assert torch.equal(extras["logsigma"], sd["logsigma"])
    model = model.double().train(train)
    x = _image()
    with torch.no_grad():
        out = model(x)
    ref = Ref(sd, train).forward(x, tasks, attention)
    ours = [F.log_softmax(out.seg, 1), out.depth] + ([out.direct["normal"]] if tasks == 3 else [])
    for name, a, b in zip(("seg", "depth", "normal"), ours, ref, strict=False):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{arch} {name} (train={train})")


def test_a_wrong_pooling_index_path_is_caught():
    """Unpooling with the indices of the wrong level (or no indices: plain upsampling) changes the function; the
    reference forward then disagrees (so the comparison above can fail)."""
    sd = fill(mtan_shapes(3))
    model = _mtan_model("segnet-mtan", 3)
    ct.load_reference_weights(model, sd, source="mtan")
    model = model.double().eval()
    x = _image()
    ref = Ref(sd, False)
    truth = ref.forward(x, 3)[1]
    original = F.max_unpool2d
    try:
        F.max_unpool2d = lambda h, ind, k, s, **kw: F.interpolate(h, scale_factor=2, mode="nearest")
        wrong = ref.forward(x, 3)[1]
    finally:
        F.max_unpool2d = original
    with torch.no_grad():
        ours = model(x).depth
    assert not torch.allclose(wrong, truth, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(ours, truth, rtol=1e-9, atol=1e-9)


def test_mtan_parameter_counts_match_the_published_networks():
    # MTAN's counts include its 3 logsigma entries; its 2-task network also has the unused level-0 attention
    # modules of a third branch (21,248 parameters), which crosstask does not build
    assert count_trainable_parameters(_mtan_model("segnet-mtan", 3)) + 3 == 44_229_076
    assert count_trainable_parameters(_mtan_model("segnet-mtan", 2)) + 3 + 21_248 == 41_228_235
    assert sum(math.prod(s) for k, s in mtan_shapes(2).items() if "running" not in k and "num_batches" not in k) == (
        41_228_235
    )


def test_mismatched_reference_weights_are_refused_in_one_line():
    model = _mtan_model("segnet-mtan", 3)
    sd = fill(mtan_shapes(2))  # a 2-task file into a 3-task model
    with pytest.raises(InputError, match=r"not an MTAN segnet-mtan state dict .*missing") as exc:
        ct.load_reference_weights(model, sd, source="mtan")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="seg,depth or seg,depth,normal"):
        ct.load_reference_weights(ct.build_model(arch="segnet-mtan", tasks=("depth",), transfer=False), sd)
    with pytest.raises(InputError, match="arch resnet"):
        ct.load_reference_weights(ct.build_model(enc_layers=18), sd)
    bad = dict(fill(mtan_shapes(3)))
    bad["pred_task1.1.weight"] = torch.zeros(7, 64, 1, 1)  # 7 classes into a 13-class head
    with pytest.raises(InputError, match="pred|seg_decoder.head.1.weight"):
        ct.load_reference_weights(model, bad)


def test_transfer_nets_keep_their_weights_when_mtan_weights_load():
    model = _mtan_model("segnet-mtan", 2, transfer=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("seg_to_depth", "depth_to_seg"))}
    ct.load_reference_weights(model, fill(mtan_shapes(2)))
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


# --- AdaMT-Net ------------------------------------------------------------------------------------------------------
def _adamt_ref(sd: dict[str, torch.Tensor], x: torch.Tensor, task: str) -> torch.Tensor:
    """AdaMT-Net's forward (eval mode: dropout off, running statistics) from the description, on crosstask's keys."""
    r = Ref(sd, train=False)

    def enc(h, p):  # conv3, BN, ReLU, conv3, BN, ReLU
        h = torch.relu(r.bn(r.conv(h, f"{p}.0", 1), f"{p}.1"))
        return torch.relu(r.bn(r.conv(h, f"{p}.3", 1), f"{p}.4"))

    def pool(h, k=1):
        for _ in range(k):
            h = F.max_pool2d(h, 2)
        return h

    e1 = enc(x, "encoder.enc1")
    e2 = enc(pool(e1), "encoder.enc2")
    e3 = enc(torch.cat((pool(e2), pool(e1, 2)), 1), "encoder.enc3")
    e4 = enc(torch.cat((pool(e3), pool(e2, 2), pool(e1, 3)), 1), "encoder.enc4")
    z = r.conv(torch.cat((pool(e4), pool(e3, 2), pool(e2, 3), pool(e1, 4)), 1), "encoder.bottleneck", 0)
    h = z
    for k, skip in enumerate((e4, e3, e2, e1)):
        p = f"{task}_decoder.blocks.{k}"
        v = torch.cat((up2_align_corners(h), skip), 1)
        l1 = torch.sigmoid(r.bn(r.conv(v, f"{p}.conv1", 1), f"{p}.bn1"))
        l2 = torch.sigmoid(r.bn(r.conv(l1, f"{p}.conv2", 1), f"{p}.bn2"))
        h = torch.cat((l2, r.sd[f"{p}.weight"] * l1 * l2), 1)
    y = F.conv2d(h, r.sd[f"{task}_decoder.head.weight"])
    return y / y.norm(p=2, dim=1, keepdim=True) if task == "normal" else y


def _filled_adamt(h: int = 32, w: int = 48):
    model = ct.build_model(arch="adamt-net", num_classes=13, tasks=("seg", "depth", "normal"), transfer=False,
                           input_size=(h, w))  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = fill(shapes)
    model.load_state_dict(sd)
    return model.double().eval(), sd


def test_adamt_net_computes_its_description():
    model, sd = _filled_adamt()
    x = _image(32, 48)
    with torch.no_grad():
        out = model(x)
    assert out.direct["normal"].shape[1] == 3  # the original's 1-channel "normal" head is fixed
    for task in ("seg", "depth", "normal"):
        torch.testing.assert_close(out.direct[task], _adamt_ref(sd, x, task), rtol=1e-9, atol=1e-9, msg=task)


def test_adamt_net_output_does_not_depend_on_the_batch():
    """One attention map per block shared by every sample: a sample's output is the same alone, first or last in a
    batch, and any batch size runs (the original kept one map per batch position)."""
    model, _ = _filled_adamt()
    x = _image(32, 48, b=3)
    with torch.no_grad():
        batch = model(x).depth
        alone = model(x[2:]).depth
        reordered = model(x.flip(0)).depth
    torch.testing.assert_close(batch[2:], alone, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batch.flip(0), reordered, rtol=1e-10, atol=1e-12)


def test_adamt_net_at_another_size_resizes_its_attention_maps():
    model, _ = _filled_adamt()
    with torch.no_grad():
        out = model(_image(64, 64, b=1))
    assert out.depth.shape == (1, 1, 64, 64) and torch.isfinite(out.depth).all()
    with pytest.raises(Exception, match="input_size"):
        ct.build_model(arch="adamt-net", tasks=("seg", "depth"))


def test_import_weights_writes_a_checkpoint_eval_and_predict_accept(tmp_path):
    """MTAN weights → a crosstask checkpoint (CLI): its model computes MTAN's function on MTAN's unnormalised
    images from crosstask's normalised ones, and eval / predict / info run on it; inputs are never replaced."""
    from helpers import make_mtan, run_cli

    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.data.prepare import PrepareOptions, prepare_nyu
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    prepared = prepare_nyu(make_mtan(tmp_path / "mtan", "nyu"), tmp_path / "nyu", PrepareOptions(32, 64, 13))
    sd = fill(mtan_shapes(3))
    weights = tmp_path / "mtan_segnet.pth"
    torch.save(sd, weights)
    ckpt = tmp_path / "imported.pt"
    r = run_cli("import-weights", str(weights), "--data", str(prepared), "--out", str(ckpt))
    assert r.exit_code == 0, r.output
    assert "segnet-mtan, tasks seg, depth, normal, 13 classes" in r.output
    c = load_checkpoint(ckpt)
    assert c["model_config"]["input_space"] == "unit" and len(c["imported"]["logsigma"]) == 3
    model = model_from_checkpoint(c).double()
    rgb = torch.rand(1, 32, 64, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(normalise((rgb * 255).round().to(torch.uint8)).double()).depth
    ref = Ref(sd, train=False).forward(((rgb * 255).round() / 255).permute(0, 3, 1, 2).double(), 3)[1]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)

    r = run_cli("eval", "--ckpt", str(ckpt), "--no-energy", "--json", str(tmp_path / "e.json"))
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / "e.json").read_text())
    assert {"segmentation", "depth", "normal"} <= set(scores) and scores["num_images"] == 2
    import cv2

    cv2.imwrite(str(tmp_path / "street.png"), (rgb[0].numpy() * 255).astype("uint8"))
    r = run_cli("predict", str(tmp_path / "street.png"), "--ckpt", str(ckpt), "--out", str(tmp_path / "pred"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred/street_normal.npy").is_file() and (tmp_path / "pred/street_depth.npy").is_file()
    r = run_cli("info", str(ckpt))
    assert r.exit_code == 0 and "SegNet-MTAN" in r.output

    again = run_cli("import-weights", str(weights), "--data", str(prepared), "--out", str(ckpt))
    assert again.exit_code != 0 and "--force" in again.output
    r = run_cli("import-weights", str(weights), "--data", str(prepared), "--out", str(weights), "--force")
    assert r.exit_code != 0 and "never writes over its inputs" in r.output and weights.read_bytes()
    torch.save({"encoder_block.0.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    r = run_cli("import-weights", str(tmp_path / "other.pth"), "--data", str(prepared), "--out", str(tmp_path / "o.pt"))
    assert r.exit_code != 0 and "not an MTAN SegNet state dict" in r.output and not (tmp_path / "o.pt").exists()


# --- AdaMT-Net weights of the original project ----------------------------------------------------------------------
def adamt_original_shapes(tasks: tuple[str, ...], h: int, w: int, positions: int, classes: int = 13) -> dict:
    """Key → shape of the original project's AdaMT-Net state dict (AdaMTNet / AdaMTNet3tasks), from the description:
    its attention maps W carry a leading batch-position dimension, its normal head one channel."""
    sd: dict[str, tuple] = {}

    def block(prefix: str, a: int, b: int) -> None:  # conv{1,2}.{0: conv3, 1: BN}
        for conv, cin in (("conv1", a), ("conv2", b)):
            sd[f"{prefix}.{conv}.0.weight"], sd[f"{prefix}.{conv}.0.bias"] = (b, cin, 3, 3), (b,)
            _bn(sd, f"{prefix}.{conv}.1", b)

    for k, (a, b) in enumerate(((3, 64), (64, 128), (192, 256), (448, 512)), start=1):
        block(f"encoder.enc_block{k}", a, b)
    sd["encoder.bottleneck.weight"], sd["encoder.bottleneck.bias"] = (1024, 960, 1, 1), (1024,)
    names = {"seg": "decoder_segmt", "depth": "decoder_depth", "normal": "decoder_normal"}
    channels = {"seg": classes, "depth": 1, "normal": 1}
    for task in tasks:
        for k, (a, b, s) in enumerate(((1536, 256, 8), (768, 128, 4), (384, 64, 2), (192, 32, 1)), start=1):
            block(f"{names[task]}.dec_block{k}", a, b)
            sd[f"{names[task]}.dec_block{k}.W"] = (positions, b, h // s, w // s)
        sd[f"{names[task]}.final_conv.weight"] = (channels[task], 64, 1, 1)
    return sd


def adamt_original_forward(sd: dict, x: torch.Tensor, task: str, train: bool) -> torch.Tensor:
    """The original's AdaMT-Net forward on its own keys, dropout off: sample i of a batch is multiplied by W[i]."""
    r = Ref(sd, train=train)
    names = {"seg": "decoder_segmt", "depth": "decoder_depth", "normal": "decoder_normal"}

    def conv_bn(h, p, act):
        return act(r.bn(r.conv(h, f"{p}.0", 1), f"{p}.1"))

    def enc(h, p):
        return conv_bn(conv_bn(h, f"{p}.conv1", torch.relu), f"{p}.conv2", torch.relu)

    def pool(h, k=1):
        for _ in range(k):
            h = F.max_pool2d(h, 2)
        return h

    e1 = enc(x, "encoder.enc_block1")
    e2 = enc(pool(e1), "encoder.enc_block2")
    e3 = enc(torch.cat((pool(e2), pool(e1, 2)), 1), "encoder.enc_block3")
    e4 = enc(torch.cat((pool(e3), pool(e2, 2), pool(e1, 3)), 1), "encoder.enc_block4")
    h = r.conv(torch.cat((pool(e4), pool(e3, 2), pool(e2, 3), pool(e1, 4)), 1), "encoder.bottleneck", 0)
    for k, skip in enumerate((e4, e3, e2, e1), start=1):
        p = f"{names[task]}.dec_block{k}"
        v = torch.cat((up2_align_corners(h), skip), 1)
        l1 = conv_bn(v, f"{p}.conv1", torch.sigmoid)
        l2 = conv_bn(l1, f"{p}.conv2", torch.sigmoid)
        h = torch.cat((l2, r.sd[f"{p}.W"][: l1.shape[0]] * l1 * l2), 1)
    return F.conv2d(h, r.sd[f"{names[task]}.final_conv.weight"])


@pytest.mark.parametrize("train", [False, True])
def test_adamt_net_weights_of_the_original_give_its_outputs(train):
    """Every entry of an original AdaMT-Net state dict (2 tasks, W for 3 batch positions, each position different)
    loads; with attention_position 0 every sample gets the original's output for a batch of one, and the other
    positions are what the original gives the later samples of a batch. Train mode: batch statistics (dropout off
    in both, as it draws random masks)."""
    h, w = 32, 48
    sd = fill(adamt_original_shapes(("seg", "depth"), h, w, positions=3))
    model = ct.build_model(arch="adamt-net", num_classes=13, tasks=("seg", "depth"), transfer=False, input_size=(h, w))
    extras = ct.load_reference_weights(model, sd, source="adamt-net")
    assert extras == {"attention_positions": 3}
    model = model.double().train(train)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0
    x = _image(h, w, b=2)
    with torch.no_grad():
        one = model(x[:1])
        both = model(x)
    for task in ("seg", "depth"):
        ref_one = adamt_original_forward(sd, x[:1], task, train)
        torch.testing.assert_close(one.direct[task], ref_one, rtol=1e-9, atol=1e-9, msg=task)
        if not train:  # a batch: crosstask gives every sample position 0's map, the original sample 1 position 1's
            ref_both = adamt_original_forward(sd, x, task, train)
            torch.testing.assert_close(both.direct[task][:1], ref_both[:1], rtol=1e-9, atol=1e-9)
            assert not torch.allclose(both.direct[task][1:], ref_both[1:])
    second = ct.build_model(arch="adamt-net", num_classes=13, tasks=("seg", "depth"), transfer=False,
                            input_size=(h, w)).double().eval()  # fmt: skip
    ct.load_reference_weights(second, sd, source="adamt-net", attention_position=1)
    with torch.no_grad():
        shifted = second.double()(x[1:]).direct["depth"]
    ref = adamt_original_forward(sd, x, "depth", False)[1:]
    torch.testing.assert_close(shifted, ref, rtol=1e-9, atol=1e-9)


def test_adamt_net_three_task_weights_load_except_the_one_channel_normal_head():
    h, w = 32, 32
    sd = fill(adamt_original_shapes(("seg", "depth", "normal"), h, w, positions=2))
    model = ct.build_model(arch="adamt-net", num_classes=13, tasks=("seg", "depth", "normal"), transfer=False,
                           input_size=(h, w))  # fmt: skip
    head = model.state_dict()["normal_decoder.head.weight"].clone()
    extras = ct.load_reference_weights(model, sd, source="adamt-net")
    assert "1 output channel" in extras["normal_head_not_loaded"] and extras["attention_positions"] == 2
    assert torch.equal(model.state_dict()["normal_decoder.head.weight"], head)
    block = model.state_dict()["normal_decoder.blocks.3.conv2.weight"]
    assert torch.equal(block, sd["decoder_normal.dec_block4.conv2.0.weight"])
    x = _image(h, w, b=1)
    with torch.no_grad():
        out = model.double().eval()(x)
    torch.testing.assert_close(out.direct["seg"], adamt_original_forward(sd, x, "seg", False), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("decoder_depth.dec_block2.conv1.1.running_var"), "1 missing"),
        (lambda sd: sd.update({"decoder_depth.dec_block2.extra": torch.zeros(1)}), "1 unexpected"),
        (lambda sd: sd.update({"encoder.bottleneck.weight": torch.zeros(512, 960, 1, 1)}), "of another shape"),
        (lambda sd: sd.update({"decoder_segmt.dec_block1.W": torch.zeros(256, 4, 6)}), "one attention map per batch"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("decoder_depth.")], "predict seg; the model's"),
    ],
)  # fmt: skip
def test_mismatched_adamt_net_weights_are_refused_in_one_line(change, message):
    sd = fill(adamt_original_shapes(("seg", "depth"), 32, 48, positions=2))
    change(sd)
    model = ct.build_model(
        arch="adamt-net", num_classes=13, tasks=("seg", "depth"), transfer=False, input_size=(32, 48)
    )
    with pytest.raises(InputError, match=message):
        ct.load_reference_weights(model, sd, source="adamt-net")
    with pytest.raises(InputError, match="--arch adamt-net weights; the model is --arch resnet"):
        ct.load_reference_weights(ct.build_model(num_classes=13), fill(adamt_original_shapes(("seg",), 32, 48, 1)),
                                  source="adamt-net")  # fmt: skip


def test_import_weights_of_adamt_net_writes_a_checkpoint_eval_and_predict_accept(tmp_path, synthetic_prepared):
    """The original's AdaMT-Net weights → a crosstask checkpoint (CLI) at the attention maps' size: its model
    computes the original's function for a batch of one on unnormalised RGB, and eval / predict run on it."""
    from helpers import run_cli

    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    sd = fill(adamt_original_shapes(("seg", "depth"), 32, 64, positions=4, classes=7))
    weights = tmp_path / "adamt.pth"
    torch.save({"model": sd}, weights)
    ckpt = tmp_path / "adamt.pt"
    r = run_cli("import-weights", weights, "--source", "adamt-net", "--data", synthetic_prepared, "--out", ckpt)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "adamt-net, tasks seg, depth, 7 classes" in text and "position 0 of 4 taken" in text
    c = load_checkpoint(ckpt)
    assert c["model_config"]["input_size"] == [32, 64] and c["imported"]["attention_positions"] == 4
    model = model_from_checkpoint(c).double()
    rgb = torch.rand(1, 32, 64, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(normalise((rgb * 255).round().to(torch.uint8)).double()).depth
    ref = adamt_original_forward(sd, ((rgb * 255).round() / 255).permute(0, 3, 1, 2).double(), "depth", False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    r = run_cli("eval", "--ckpt", ckpt, "--data", synthetic_prepared, "--no-energy", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert {"segmentation", "depth"} <= set(json.loads((tmp_path / "e.json").read_text()))
    r = run_cli("import-weights", weights, "--source", "adamt-net", "--arch", "segnet", "--data", synthetic_prepared,
                "--out", tmp_path / "x.pt")  # fmt: skip
    assert r.exit_code == 1 and "makes an adamt-net model" in r.output
    torch.save(fill(mtan_shapes(2)), tmp_path / "mtan.pth")
    r = run_cli("import-weights", tmp_path / "mtan.pth", "--source", "adamt-net", "--data", synthetic_prepared,
                "--out", tmp_path / "y.pt")  # fmt: skip
    assert r.exit_code == 1 and "not an AdaMT-Net state dict" in r.output and not (tmp_path / "y.pt").exists()
