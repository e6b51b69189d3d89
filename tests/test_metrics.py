from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from crosstask_cli.metrics import ConfusionMatrix, DepthMetrics, OriginalProtocolMetrics


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
