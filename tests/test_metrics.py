from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import forbid_host_reads
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from crosstask_cli.engine.evaluator import MetricSet
from crosstask_cli.errors import DatasetError
from crosstask_cli.metrics import (
    ConfusionMatrix,
    DepthMetrics,
    OriginalProtocolMetrics,
    depth_error_sums,
)
from crosstask_cli.ops import class_labels


def random_seg(seed=0, n=6, c=5, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.2] = 255
    pred = torch.where(
        torch.rand(n, h, w, generator=g) < 0.6, target.clamp(max=c - 1), torch.randint(0, c, (n, h, w), generator=g)
    )
    return pred, target


def test_segmentation_metrics_match_torchmetrics():
    pred, target = random_seg()
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    res = cm.compute()
    jac = MulticlassJaccardIndex(5, average="none", ignore_index=255)(pred, target)
    assert np.allclose(list(res["per_class_iou"].values()), jac.numpy(), atol=1e-6)
    assert res["miou"] == pytest.approx(
        MulticlassJaccardIndex(5, average="macro", ignore_index=255)(pred, target).item(), abs=1e-6
    )
    acc = MulticlassAccuracy(5, average="micro", ignore_index=255)(pred, target)
    assert res["pixel_acc"] == pytest.approx(acc.item(), abs=1e-6)


def test_logits_are_accepted_like_class_ids():
    pred, target = random_seg()
    logits = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred, target)
    b.update(logits, target)
    assert torch.equal(a.matrix, b.matrix)


def test_standard_protocol_is_batch_size_invariant():
    pred, target = random_seg(n=8)
    depth_p, depth_t = torch.rand(8, 1, 9, 11) + 0.1, torch.rand(8, 1, 9, 11)
    depth_t[depth_t < 0.3] = 0
    whole_cm, whole_d = ConfusionMatrix(5), DepthMetrics()
    whole_cm.update(pred, target)
    whole_d.update(depth_p, depth_t)
    ones_cm, ones_d = ConfusionMatrix(5), DepthMetrics()
    for i in range(8):
        ones_cm.update(pred[i : i + 1], target[i : i + 1])
        ones_d.update(depth_p[i : i + 1], depth_t[i : i + 1])
    assert whole_cm.compute() == ones_cm.compute()
    a, b = whole_d.compute(), ones_d.compute()
    assert all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a)


def test_classes_absent_from_target_and_prediction_do_not_count():
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    res = cm.compute()
    # class 0: 1/(1+0+1)=0.5 ; class 1: 2/(2+1+0)=2/3 ; classes 2, 3 absent → excluded, reported NaN
    assert res["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert np.isnan(res["per_class_iou"]["2"]) and np.isnan(res["per_class_iou"]["3"])
    assert res["pixel_acc"] == pytest.approx(3 / 4)


def test_all_ignored_batch_changes_nothing():
    pred, target = random_seg()
    cm, dm = ConfusionMatrix(5), DepthMetrics()
    cm.update(pred, target)
    dm.update(torch.rand(6, 1, 9, 11), torch.rand(6, 1, 9, 11))
    before_cm, before_d = cm.matrix.clone(), dm.sums.clone()
    cm.update(pred, torch.full_like(target, 255))
    dm.update(torch.rand(6, 1, 9, 11), torch.zeros(6, 1, 9, 11))
    assert torch.equal(cm.matrix, before_cm) and torch.equal(dm.sums, before_d)


def test_depth_metrics_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [4.0, 9.0]]]])
    target = torch.tensor([[[[2.0, 2.0], [0.0, 10.0]]]])
    res = DepthMetrics()
    res.update(pred, target)
    r = res.compute()
    assert r["abs_err"] == pytest.approx((1 + 0 + 1) / 3)
    assert r["rel_err"] == pytest.approx((0.5 + 0 + 0.1) / 3)
    assert r["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert r["delta1"] == pytest.approx(2 / 3)  # ratios 2, 1, 1.11
    # ratio 2 fails even δ3 (1.25³ ≈ 1.953)
    assert r["delta2"] == pytest.approx(2 / 3) and r["delta3"] == pytest.approx(2 / 3)
    # the original's further errors: pairs (1, 2), (2, 2), (9, 10)
    assert r["sq_rel"] == pytest.approx((1 / 2 + 0 + 1 / 10) / 3)
    assert r["rmse_log"] == pytest.approx(np.sqrt((np.log(0.5) ** 2 + 0 + np.log(0.9) ** 2) / 3))
    assert r["irmse"] == pytest.approx(np.sqrt(((1 - 0.5) ** 2 + 0 + (1 / 9 - 0.1) ** 2) / 3))


def test_log_and_reciprocal_errors_floor_non_positive_predictions():
    m = DepthMetrics()
    m.update(torch.tensor([[[[0.0, -1.0]]]]), torch.tensor([[[[1.0, 1.0]]]]))
    r = m.compute()
    assert r["rmse_log"] == pytest.approx(abs(np.log(1e-9)), rel=1e-4)  # both floored at 1e-9
    assert np.isfinite(r["irmse"]) and r["irmse"] == pytest.approx(1e9, rel=1e-4)


def test_irmse_is_reported_for_metric_depth_only():
    """On inverse depth, 1/p is depth: a disparity predicted near 0 (sky) made iRMSE 23,213,069 on a real run."""
    from crosstask_cli.tasks import TaskContext, get_task

    pred, target = torch.tensor([[[[1e-7, 0.2]]]]), torch.tensor([[[[0.1, 0.2]]]])
    inverse = get_task("depth").metrics("standard", TaskContext(7, 255, depth_kind="inverse"))
    metric = get_task("depth").metrics("standard", TaskContext(7, 255, depth_kind="metric"))
    for m in (inverse, metric):
        m.update(pred, target)
    assert "irmse" not in inverse.compute() and inverse.compute()["abs_err"] == pytest.approx(0.05, rel=1e-5)
    assert metric.compute()["irmse"] > 1e6


def test_original_protocol_averages_per_image_and_per_batch():
    # image A: perfect on its one class; image B: half right across two classes
    target = torch.tensor([[[0, 0, 0, 0]], [[1, 1, 2, 2]]])
    pred = torch.tensor([[[0, 0, 0, 0]], [[1, 1, 1, 1]]])
    m = OriginalProtocolMetrics(3)
    m.update(pred, target, torch.ones(2, 1, 1, 4), torch.ones(2, 1, 1, 4))
    r = m.compute()
    # A: mIoU 1 (only class 0 present), acc 1; B: class1 IoU 2/4, class2 IoU 0 → 0.25, acc 0.5
    assert r["miou"] == pytest.approx((1 + 0.25) / 2)
    assert r["pixel_acc"] == pytest.approx(0.75)
    # pooled: class0 1, class1 0.5, class2 0 → 0.5: the protocols differ
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.compute()["miou"] == pytest.approx(0.5)


def test_original_protocol_depth_is_batch_weighted():
    m = OriginalProtocolMetrics(2)
    seg = torch.zeros(1, 1, 2, dtype=torch.long)
    m.update(seg, seg, torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))  # batch 1: abs 1
    seg3 = torch.zeros(3, 1, 2, dtype=torch.long)
    m.update(seg3, seg3, torch.ones(3, 1, 1, 2), torch.ones(3, 1, 1, 2))  # batch of 3: abs 0
    assert m.compute()["abs_err"] == pytest.approx(1 / 4)


def test_non_positive_depth_predictions_never_count_as_accurate():
    pred = torch.tensor([[[[-2.0, 0.0, 1.0]]]])
    target = torch.tensor([[[[2.0, 1.0, 1.0]]]])
    m = DepthMetrics()
    m.update(pred, target)
    r = m.compute()
    assert r["delta3"] == pytest.approx(1 / 3)
    assert r["abs_err"] == pytest.approx((4 + 1 + 0) / 3)


@pytest.mark.parametrize("c", [1, 2, 7, 19, 255, 300])
def test_class_labels_equal_argmax_in_every_layout(c):
    g = torch.Generator().manual_seed(c)
    logits = torch.randn(3, c, 5, 6, generator=g)
    logits[0, :, 0, 0] = 1.0  # a full tie → class 0
    if c > 3:
        logits[1, :, 0, 0] = -5.0
        logits[1, 1, 0, 0] = logits[1, 3, 0, 0] = 2.0  # the first of two maxima
        logits[2, :, 1, 1] = -torch.inf
        logits[2, c - 1, 1, 1] = torch.inf
    expected = logits.argmax(1)
    for x in (logits, logits.contiguous(memory_format=torch.channels_last), logits[:, :, :, ::2]):
        got = class_labels(x)
        assert got.dtype == torch.int64
        assert torch.equal(got, x.argmax(1))
    assert torch.equal(class_labels(logits), expected)
    assert torch.equal(class_labels(logits.double()), expected)
    assert torch.equal(class_labels(logits[:, :, 0]), expected[:, 0])  # B×C×W: any trailing dims


def test_class_labels_of_nan_scores_stay_in_range():
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 1, 0, 0] = torch.nan
    got = class_labels(logits)
    assert int(got.min()) >= 0 and int(got.max()) <= 3
    assert got[0, 1, 1] == 0


def reference_depth_sums(pred, target):
    """The depth metric definitions written directly, in float64 with boolean selection."""
    p, t = pred.double().reshape(target.shape), target.double()
    v = t > 0
    p, t = p[v], t[v]
    err = (p - t).abs()
    ratio = torch.where(p > 0, torch.maximum(p / t, t / p), torch.inf)
    floored = p.clamp(min=1e-9)
    return torch.tensor([float(v.sum()), float(err.sum()), float((err / t).sum()), float((err**2).sum()),
                         float((ratio < 1.25).sum()), float((ratio < 1.25**2).sum()), float((ratio < 1.25**3).sum()),
                         float((err**2 / t).sum()), float(((floored.log() - t.log()) ** 2).sum()),
                         float(((1 / floored - 1 / t) ** 2).sum())],
                        dtype=torch.float64)  # fmt: skip


def test_depth_error_sums_match_the_definition():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(4, 1, 16, 24, generator=g) * 2 - 0.2  # some non-positive predictions
    target = torch.rand(4, 1, 16, 24, generator=g)
    target[target < 0.25] = 0
    target[0, 0, 0, :3] = -1.0  # negative targets are invalid too
    pred[1, 0, 0, 0], target[1, 0, 0, 0] = 1.25, 1.0  # exactly on the δ1 threshold: not within it
    pred[1, 0, 0, 1], target[1, 0, 0, 1] = 0.0, 1.0
    got, ref = depth_error_sums(pred, target), reference_depth_sums(pred, target)
    assert torch.equal(got[[0, 4, 5, 6]], ref[[0, 4, 5, 6]])  # counts: exact
    assert torch.allclose(got, ref, rtol=1e-6)
    assert torch.allclose(depth_error_sums(pred[:, 0], target[:, 0]), got)  # B×H×W accepted as well
    assert torch.equal(depth_error_sums(pred[:0], target[:0]), torch.zeros(10, dtype=torch.float64))


def test_metric_set_keeps_only_the_protocols_asked_for():
    pred, target = random_seg(n=4)
    dp, dt = torch.rand(4, 1, 9, 11) + 0.1, torch.rand(4, 1, 9, 11)
    logits = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    both, standard, original = MetricSet(5), MetricSet(5, ("standard",)), MetricSet(5, ("original",))
    for m in (both, standard, original):
        m.update(logits, target, dp, dt)
    assert both.result("standard", "val").to_dict() == standard.result("standard", "val").to_dict()
    assert both.result("original", "val").to_dict() == original.result("original", "val").to_dict()
    alone = OriginalProtocolMetrics(5)
    alone.update(pred, target, dp, dt)
    o = alone.compute()
    assert original.result("original", "val").segmentation["miou"] == pytest.approx(o["miou"], abs=1e-12)
    assert original.result("original", "val").depth["abs_err"] == pytest.approx(o["abs_err"], rel=1e-12)
    assert standard.original.images == 0  # the per-image work was not done
    with pytest.raises(ValueError, match="original"):
        standard.result("original", "val")
    with pytest.raises(ValueError, match="protocol"):
        MetricSet(5, ("pooled",))


def test_original_protocol_with_an_ignore_index_inside_the_class_range():
    target = torch.tensor([[[0, 1, 1, 2]]])
    pred = torch.tensor([[[1, 1, 2, 2]]])
    m = OriginalProtocolMetrics(3, ignore_index=0)
    m.update(pred, target, None, torch.zeros(1, 1, 1, 4))
    r = m.compute()
    # the pixel with target 0 is not counted: class 1 IoU 1/2, class 2 IoU 1/2, class 0 absent
    assert r["miou"] == pytest.approx(0.5) and r["pixel_acc"] == pytest.approx(2 / 3)


def test_metric_updates_never_read_the_device_back(monkeypatch):
    """On a GPU, reading a value back to the host waits for the device; the evaluator's per-batch updates (both
    protocols, depth, consistency) must only launch work, with one read at the end of the evaluation. On CPU that
    is checked by making every read-back method of tensors raise during the updates."""
    from crosstask_cli.engine.evaluator import MetricSet

    g = torch.Generator().manual_seed(0)
    b, c, h, w = 3, 5, 8, 16
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[:, 0] = 255
    logits, logits_t = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)
    dp, dt, dp_t = (torch.rand(b, 1, h, w, generator=g) for _ in range(3))
    metrics = MetricSet(c, ("standard", "original"))

    with forbid_host_reads(monkeypatch):
        for _ in range(2):
            metrics.update(logits, target, dp, dt)
            metrics.consistency.update(logits, logits_t, dp, dp_t, target, dt)
    standard, original = metrics.result("standard", "val"), metrics.result("original", "val")
    assert 0 <= standard.segmentation["miou"] <= 1 and original.depth["abs_err"] > 0
    assert metrics.images == 2 * b
    # out-of-range targets are still refused, when the scores are read
    bad = target.clone()
    bad[0, 1, 1] = c
    metrics.update(logits, bad, dp, dt)
    with pytest.raises(DatasetError, match="out of range"):
        metrics.result("standard", "val")
