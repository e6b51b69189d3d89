"""The task registry and surface normals: specs by name, the normal loss and metrics by hand, normals through
data preparation, augmentation and the synthetic renderer, and the N-task network and objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import forbid_host_reads

import crosstask_cli as ct
from crosstask_cli.errors import ConfigError
from crosstask_cli.tasks import (
    TaskContext,
    default_pairs,
    get_task,
    loss_names,
    parse_pairs,
    task_names,
    transfer_loss_name,
)


def _unit(*v) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _normals(vectors: list[list[float]]) -> torch.Tensor:
    """1×3×1×N normals from N 3-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


# --- the registry -------------------------------------------------------------------------------------------------


def test_the_registry_knows_every_task_and_names_what_a_pair_concerns():
    assert task_names() == ("seg", "depth", "normal")
    assert ct.get_task("normal") is get_task("normal")
    with pytest.raises(ConfigError, match="unknown task 'albedo'; known tasks: seg, depth, normal"):
        get_task("albedo")
    assert default_pairs(("depth", "seg")) == (("seg", "depth"), ("depth", "seg"))  # the original's two, its order
    assert len(default_pairs(("seg", "depth", "normal"))) == 6
    assert parse_pairs("normal:seg,seg:normal", ("seg", "normal")) == (("seg", "normal"), ("normal", "seg"))
    for bad, match in (("seg:seg", "to itself"), ("seg-depth", "SOURCE:TARGET"), ("seg:normal", "not trained"),
                       ("seg:depth,seg:depth", "twice")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            parse_pairs(bad, ("seg", "depth"))
    # the original's two keep their names; every other pair says its source
    assert (transfer_loss_name("seg", "depth"), transfer_loss_name("depth", "seg")) == ("tdepth", "tseg")
    assert transfer_loss_name("seg", "normal") == "tnormal_from_seg"
    assert loss_names(("seg", "depth"), default_pairs(("seg", "depth"))) == (
        "seg", "depth", "tseg", "tdepth", "seg_task", "depth_task")  # fmt: skip
    # every metric a task reports has a direction, and the compared ones are among them
    for spec in (get_task(t) for t in task_names()):
        assert set(spec.compared) <= set(spec.directions) and set(spec.logged) <= set(spec.directions)


# --- the normal loss and metrics ----------------------------------------------------------------------------------


def test_normal_losses_by_hand_over_valid_pixels_only():
    spec = get_task("normal")
    target = _normals([[0, 0, 1], [0, 0, 1], [0, 0, 0]])  # the third pixel is invalid
    pred = _normals([[0, 0, 1], _unit(1, 0, 1), [1, 0, 0]])
    cos = [1.0, 1 / math.sqrt(2)]
    assert spec.loss(pred, target).item() == pytest.approx(1 - sum(cos) / 2, rel=1e-6)  # MTAN: 1 − mean cosine
    l1 = (0 + (1 / math.sqrt(2) + abs(1 / math.sqrt(2) - 1))) / 2
    assert spec.loss(pred, target, "l1").item() == pytest.approx(l1, rel=1e-6)
    assert spec.loss(pred, torch.zeros_like(target)).item() == 0.0  # no valid pixel: 0, never NaN
    # transferred: against the detached direct normals, over the target's valid pixels
    direct = pred.clone().requires_grad_(True)
    transferred = _normals([[0, 0, 1], [0, 0, 1], [0, 1, 0]]).requires_grad_(True)
    loss = spec.transferred_loss(transferred, direct, target, "xtsc")
    assert loss.item() == pytest.approx(1 - (1 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    loss.backward()
    assert direct.grad is None and transferred.grad is not None
    xtc = spec.transferred_loss(transferred, direct, target, "xtc")
    assert xtc.item() == pytest.approx(0.0, abs=1e-7)  # the transferred ones equal the ground truth where valid


def _angles_deg(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    cos = (pred * target).sum(1).clamp(-1, 1)
    valid = (target != 0).any(1)
    return np.degrees(np.arccos(cos[valid].double().numpy()))


def _random_normals(g, b, h, w, invalid=0.2):
    t = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    t[(torch.rand(b, 1, h, w, generator=g) < invalid).expand(-1, 3, -1, -1)] = 0
    p = torch.nn.functional.normalize(t + 0.6 * torch.randn(b, 3, h, w, generator=g), dim=1)
    return p, t


def test_standard_normal_metrics_are_pooled_with_an_exact_median():
    g = torch.Generator().manual_seed(0)
    spec = get_task("normal")
    m = spec.metrics("standard")
    batches = [_random_normals(g, 2, 5, 7) for _ in range(3)] + [_random_normals(g, 1, 4, 6)]
    for p, t in batches:
        m.update(p, t)
    errors = np.concatenate([_angles_deg(p, t) for p, t in batches])
    r = m.compute()
    assert r["mean_angle"] == pytest.approx(errors.mean(), rel=1e-5)
    assert abs(r["median_angle"] - np.median(errors)) <= 1 / 512 + 1e-4  # the histogram's bin centre
    for key, thr in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0)):
        assert r[key] == pytest.approx((errors < thr).mean(), abs=1e-12)
    # batch-size invariant: one batch of everything gives the same
    one = spec.metrics("standard")
    for p, t in batches:
        for i in range(p.shape[0]):
            one.update(p[i : i + 1], t[i : i + 1])
    assert one.compute() == r


def test_the_median_of_an_even_count_is_the_mean_of_the_two_middle_errors():
    m = get_task("normal").metrics("standard")
    target = _normals([[0, 0, 1]] * 4)
    pred = _normals([[0, 0, 1], _unit(math.tan(math.radians(10)), 0, 1), _unit(math.tan(math.radians(20)), 0, 1),
                     _unit(1, 0, 0)])  # errors 0°, 10°, 20°, 90°  # fmt: skip
    m.update(pred, target)
    r = m.compute()
    assert r["median_angle"] == pytest.approx(15.0, abs=1 / 512 + 1e-4)
    assert r["mean_angle"] == pytest.approx(30.0, rel=1e-5) and r["within_11_25"] == 0.5


def test_original_normal_metrics_average_per_batch_values_as_mtan():
    """MTAN's scripts: per batch np.mean / np.median / shares of the batch's valid errors, then the mean over
    batches (so its median is a mean of medians); a batch without valid pixels is skipped."""
    g = torch.Generator().manual_seed(1)
    m = get_task("normal").metrics("original")
    batches = [_random_normals(g, 2, 4, 5), _random_normals(g, 3, 4, 5), _random_normals(g, 1, 3, 3)]
    empty = (batches[0][0][:1], torch.zeros(1, 3, 4, 5))
    for p, t in [*batches, empty]:
        m.update(p, t)
    per_batch = [_angles_deg(p, t) for p, t in batches]
    r = m.compute()
    assert r["mean_angle"] == pytest.approx(np.mean([e.mean() for e in per_batch]), rel=1e-5)
    assert r["median_angle"] == pytest.approx(np.mean([np.median(e) for e in per_batch]), rel=1e-5)
    assert r["within_22_5"] == pytest.approx(np.mean([(e < 22.5).mean() for e in per_batch]), abs=1e-12)


def test_metric_updates_of_three_tasks_never_read_the_device_back(monkeypatch):
    from crosstask_cli.engine.evaluator import MetricSet
    from crosstask_cli.errors import DatasetError

    g = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 4, 6, 8
    tasks = ("seg", "depth", "normal")
    metrics = MetricSet(c, ("standard", "original"), tasks=tasks)
    normal_p, normal_t = _random_normals(g, b, h, w)
    preds = {
        "seg": torch.randn(b, c, h, w, generator=g),
        "depth": torch.rand(b, 1, h, w, generator=g),
        "normal": normal_p,
    }
    targets = {"seg": torch.randint(0, c, (b, h, w), generator=g), "depth": torch.rand(b, 1, h, w, generator=g),
               "normal": normal_t}  # fmt: skip
    transferred = {pair: preds[pair[1]].flip(0) for pair in default_pairs(tasks)}

    with forbid_host_reads(monkeypatch):
        for _ in range(2):
            metrics.update(preds, targets)
            metrics.consistency.update_pairs(preds, transferred, targets)
    metrics.has_consistency = True
    for protocol in ("standard", "original"):
        r = metrics.result(protocol, "val")
        assert set(r.metrics) == set(tasks) and 0 <= r.metrics["normal"]["mean_angle"] <= 180
    assert set(metrics.result("standard", "val").consistency) == {
        "seg_agreement", "seg_agreement_from_normal", "depth_gap", "depth_gap_from_normal", "normal_gap_from_seg",
        "normal_gap_from_depth"}  # fmt: skip
    bad = dict(targets, seg=targets["seg"].clone())
    bad["seg"][0, 0, 0] = c  # out-of-range targets are still refused, when the scores are read
    metrics.update(preds, bad)
    with pytest.raises(DatasetError, match="out of range"):
        metrics.result("standard", "val")


# --- normals in the data ----------------------------------------------------------------------------------------


def test_a_horizontal_flip_mirrors_the_normals_and_rescaling_keeps_them():
    spec = get_task("normal")
    n = np.zeros((2, 3, 3), np.float32)
    n[0, 0] = _unit(0.6, 0.0, 0.8)
    n[1, 2] = _unit(-0.3, -0.4, 0.5)
    flipped = spec.flip(n)
    assert np.allclose(flipped[0, 2], _unit(-0.6, 0.0, 0.8)) and np.allclose(flipped[1, 0], _unit(0.3, -0.4, 0.5))
    assert not (flipped[0, 0] != 0).any()  # an invalid pixel stays the zero vector
    assert np.array_equal(spec.rescale(n, 1.5, TaskContext()), n)
    from crosstask_cli.data.resize import resize_nearest

    big = resize_nearest(n, 5, 7)  # nearest pixel centres: every vector is one of the originals
    norms = np.linalg.norm(big, axis=-1)
    assert set(np.round(norms, 6).ravel().tolist()) <= {0.0, 1.0}


def test_the_renderer_writes_the_exact_normal_of_each_surface_in_nyus_convention():
    """A camera pitched down by p sees the ground (world normal up) as (0, −cos p, sin p) and a wall facing it as
    (0, sin p, cos p) in NYUv2's frame (x right, y down, z towards the camera); sky has no normal."""
    from crosstask_cli.data.synthetic import Camera, Renderer, normals_to_png

    cam = Camera(24, 32, cam_height=1.3, pitch=math.radians(4.0), lateral=0.0)
    r = Renderer(cam, np.random.default_rng(0))
    r.ground(0.0, 50.0, 1.0, {k: np.ones(3, np.float32) for k in ("road", "sidewalk", "terrain")})
    r.box((-20, 0, 30), (20, 50, 31), 11, (0.5, 0.5, 0.5))  # a wall across the view, facing the camera
    f = r.frame
    normals = cam.to_camera_normals(f.normal)
    c, s = math.cos(cam.pitch), math.sin(cam.pitch)
    ground = f.ids == 7
    wall = f.ids == 11
    assert ground.any() and wall.any()
    assert np.allclose(normals[ground], [0, -c, s], atol=1e-6)
    assert np.allclose(normals[wall], [0, s, c], atol=1e-6)
    # a full scene: unit normals where there is a surface, zero in the sky; the PNG encoding decodes within 1e-4
    from crosstask_cli.data.synthetic import render_scene_full

    scene = render_scene_full([0, 0, 3], 32, 64)
    sky = scene.ids == 23
    assert sky.any() and not scene.normals[sky].any()
    assert np.allclose(np.linalg.norm(scene.normals[~sky], axis=-1), 1, atol=1e-5)
    png = normals_to_png(scene.normals)
    decoded = (png.astype(np.float64) - 1) / 65534 * 2 - 1
    assert np.abs(decoded[~sky] - scene.normals[~sky]).max() < 1e-4 and not png[sky].any()


def test_prepared_synthetic_and_nyu_data_carry_normals(synthetic_prepared, tmp_path):
    from helpers import make_mtan

    from crosstask_cli.data.dataset import PreparedDataset
    from crosstask_cli.data.prepare import PrepareOptions, prepare_nyu
    from crosstask_cli.data.prepared import read_meta

    meta = read_meta(synthetic_prepared)
    assert meta.tasks == ("seg", "depth", "normal")
    ds = PreparedDataset(synthetic_prepared, "val")
    image, targets, _ = ds[0]
    n = targets["normal"]
    assert n.shape == (3, 32, 64) and targets["seg"].shape == (32, 64) and targets["depth"].shape == (1, 32, 64)
    length = n.norm(dim=0)
    assert torch.allclose(length[length > 0], torch.ones(()), atol=1e-4)
    # MTAN's NYUv2 normals: kept (valid vectors renormalised to unit length), zero vectors stay invalid
    src = make_mtan(tmp_path / "nyu", "nyu")
    raw = np.load(src / "train" / "normal" / "1.npy")
    raw[0, 0] = 0
    np.save(src / "train" / "normal" / "1.npy", raw)
    out = prepare_nyu(src, tmp_path / "nyu-prep", PrepareOptions(8, 16, 13))
    got = np.load(out / "train" / "normals.npy")[1]
    expect = raw / np.maximum(np.linalg.norm(raw, axis=-1, keepdims=True), 1e-30)
    assert np.allclose(got, expect, atol=1e-6) and not got[0, 0].any()
    assert read_meta(out).tasks == ("seg", "depth", "normal")
    bad = raw.copy()
    bad[1, 1] = [2.0, 0.0, 0.0]
    np.save(src / "train" / "normal" / "1.npy", bad)
    with pytest.raises(ValueError, match=r"normal/1\.npy: values up to 2"):
        prepare_nyu(src, tmp_path / "nyu-bad", PrepareOptions(8, 16, 13))
    assert not (tmp_path / "nyu-bad").exists()


def test_normals_on_cityscapes_are_refused_naming_the_dataset():
    with pytest.raises(ConfigError, match="--tasks seg,depth,normal: Cityscapes has no surface normals"):
        ct.TrainConfig.for_dataset("cityscapes", tasks=("seg", "depth", "normal"))
    ct.TrainConfig.for_dataset("nyu", tasks=("seg", "depth", "normal"))
    ct.TrainConfig.for_dataset("synthetic", tasks=("normal",))


# --- the N-task network and objective -----------------------------------------------------------------------------


def test_three_tasks_build_a_decoder_each_and_a_transfer_net_per_pair():
    model = ct.build_model(18, 5, tasks=("seg", "depth", "normal")).eval()
    names = {n for n, _ in model.named_children()}
    assert {"seg_decoder", "depth_decoder", "normal_decoder"} <= names
    assert {f"{s}_to_{t}" for s, t in default_pairs(("seg", "depth", "normal"))} <= names
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        pred = model(x)
    assert pred.direct["normal"].shape == (2, 3, 64, 96)
    assert torch.allclose(pred.direct["normal"].norm(dim=1), torch.ones(()), atol=1e-5)  # L2-normalised head
    assert torch.allclose(pred.transferred[("seg", "normal")].norm(dim=1), torch.ones(()), atol=1e-5)
    assert torch.allclose(pred.transferred[("normal", "seg")].exp().sum(1), torch.ones(()), atol=1e-5)  # log-probs
    # the seg→depth net reads the seg log-probabilities: shifting the logits changes nothing
    with torch.no_grad():
        shifted = model.seg_to_depth(pred.seg + 3.0)
    assert torch.allclose(shifted, pred.transferred[("seg", "depth")], atol=1e-5)
    few = ct.build_model(18, 5, tasks=("seg", "depth", "normal"), transfer_pairs=(("normal", "depth"),))
    assert [n for n, _ in few.named_children() if "_to_" in n] == ["normal_to_depth"]


def test_the_objective_of_three_tasks_groups_each_transferred_loss_under_its_source():
    torch.manual_seed(0)
    tasks = ("seg", "depth", "normal")
    b, c, h, w = 2, 3, 8, 8
    direct = {"seg": torch.randn(b, c, h, w, requires_grad=True), "depth": torch.rand(b, 1, h, w, requires_grad=True),
              "normal": torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1).requires_grad_(True)}  # fmt: skip
    pairs = default_pairs(tasks)
    transferred = {p: torch.randn_like(direct[p[1]]).requires_grad_(True) for p in pairs}
    targets = {"seg": torch.randint(0, c, (b, h, w)), "depth": torch.rand(b, 1, h, w) + 0.1,
               "normal": torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1)}  # fmt: skip
    loss = ct.CrossTaskLoss(c, alpha=0.1, gamma=0.2, tasks=tasks, weights={"normal": 0.3})
    out = loss(ct.Predictions(direct=direct, transferred=transferred), targets)
    assert tuple(out) == loss.names and len(out) == 3 + 6 + 3
    for s, lam in (("seg", 0.1), ("depth", 0.2), ("normal", 0.3)):
        own = [out[transfer_loss_name(s, t)] for a, t in pairs if a == s]
        expected = (1 - lam) * out[s] + lam * (own[0] + own[1]) / 2
        assert out[f"{s}_task"].item() == pytest.approx(expected.item(), rel=1e-6)
    # each transferred loss reaches only its own net's input and not the direct prediction it is compared with
    g = torch.autograd.grad(out["tnormal_from_depth"], [transferred[("depth", "normal")], direct["normal"]],
                            allow_unused=True)  # fmt: skip
    assert g[0] is not None and g[1] is None
    with pytest.raises(ConfigError, match="consistency weight of normal must be in"):
        ct.CrossTaskLoss(c, tasks=tasks, weights={"normal": 1.5})
    with pytest.raises(ConfigError, match="normal_loss must be one of cos, l1"):
        ct.CrossTaskLoss(c, tasks=tasks, options={"normal_loss": "l2"})
