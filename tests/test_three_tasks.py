"""The 3-task lifecycle on synthetic scenes through the command line: train seg, depth and normals with the six
TaskTransferNets, evaluate, predict (normal files), draw, export, compare with Δm over nine metrics; and the files
of earlier versions still read as seg and depth."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers import TINY, run_cli

import crosstask_cli as ct
from crosstask_cli.errors import ConfigError


@pytest.fixture(scope="module")
def three_task_run(synthetic_raw, tmp_path_factory):
    run = tmp_path_factory.mktemp("three") / "run"
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", run, "--epochs", "1", *TINY,
                "--max-steps-per-epoch", "2", "--tasks", "seg,depth,normal", "--weighting", "uncertainty",
                "--consistency-weights", "normal=0.05", "--select-metric", "mean_angle")  # fmt: skip
    assert r.exit_code == 0, r.output
    return run


def test_train_three_tasks_logs_every_component_and_checkpoints_six_nets(three_task_run):
    rows = list(csv.DictReader((three_task_run / "metrics.csv").open()))
    for key in ("train_normal", "train_tnormal_from_seg", "train_tseg_from_normal", "train_normal_task",
                "weight_normal_task", "val_mean_angle", "val_median_angle", "val_within_11_25", "val_normal_gap_from_seg"):  # fmt: skip
        assert key in rows[0] and math.isfinite(float(rows[0][key])), key
    ckpt = torch.load(three_task_run / "checkpoints/best.pt", weights_only=True)
    assert ckpt["model_config"]["tasks"] == ["seg", "depth", "normal"]
    nets = {k.split(".")[0] for k in ckpt["model"] if "_to_" in k}
    assert nets == {
        "seg_to_depth",
        "seg_to_normal",
        "depth_to_seg",
        "depth_to_normal",
        "normal_to_seg",
        "normal_to_depth",
    }
    assert ckpt["weighting"]["state"]["log_vars"].shape == (3,)
    cfg = json.loads((three_task_run / "config.json").read_text())
    assert cfg["loss"]["consistency_weights"] == ["normal=0.05"] and cfg["runtime"]["select_metric"] == "mean_angle"


def test_eval_reports_normals_and_the_six_pairs(three_task_run, tmp_path):
    out = tmp_path / "eval.json"
    r = run_cli("eval", "--ckpt", three_task_run / "checkpoints/best.pt", "--json", out, "--device", "cpu",
                "--protocol", "original")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "mean angle error (°)" in r.output and "normal gap" in r.output
    d = json.loads(out.read_text())
    assert set(d["normal"]) == {"mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30"}
    assert 0 <= d["normal"]["mean_angle"] <= 180 and 0 <= d["normal"]["within_30"] <= 1
    assert len(d["consistency"]) == 6 and "depth_gap_from_normal" in d["consistency"]
    e = d["energy"]  # the energy report: every target task, the combined energy over the six pairs
    assert set(e["mean"]) == {"seg", "depth", "normal", "combined"}
    assert "normal_from_seg" in e["transferred"] and "normal_energy_vs_mean_angle" in e["spearman"]
    assert "pixels_angle_by_normal_energy" in e["sparsification"]


def test_predict_writes_normals_and_the_other_tools_read_them(three_task_run, tmp_path):
    import cv2

    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    ckpt = three_task_run / "checkpoints/best.pt"
    r = run_cli("predict", img.parent, "--ckpt", ckpt, "--out", tmp_path / "p", "--transfer", "--device", "cpu")
    assert r.exit_code == 0, r.output
    normal = np.load(tmp_path / "p" / "a_normal.npy")
    assert normal.shape == (50, 90, 3) and normal.dtype == np.float32
    assert np.allclose(np.linalg.norm(normal, axis=-1), 1, atol=1e-5)  # unit vectors at the input's size
    colour = cv2.cvtColor(cv2.imread(str(tmp_path / "p" / "a_normal_color.png")), cv2.COLOR_BGR2RGB)
    assert np.abs(colour.astype(float) - ((normal + 1) / 2 * 255)).max() <= 1  # (n + 1)/2 as RGB
    for name in ("a_normal_transfer_from_seg.npy", "a_normal_transfer_from_depth.npy", "a_seg_transfer_from_normal.png",
                 "a_depth_transfer.npy", "a_seg_transfer.png"):  # fmt: skip
        assert (tmp_path / "p" / name).is_file(), name
    manifest = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert manifest["tasks"] == ["seg", "depth", "normal"] and len(manifest["transferred"]) == 6
    r = run_cli("visualize", "predictions", tmp_path / "p", "--out", tmp_path / "panels")
    assert r.exit_code == 0, r.output
    panel = cv2.imread(str(tmp_path / "panels" / "a_panel.png"))
    assert panel is not None and panel.shape[1] > 8 * panel.shape[0]  # image, 3 tasks and 6 transferred maps
    # float16 normal files: half the size, the same directions to within float16's rounding
    from crosstask_cli.predict import predict

    for dtype in ("float32", "float16"):  # same precision (the API's fp32) for both
        assert len(predict([img], ckpt, tmp_path / dtype, normal_dtype=dtype, device="cpu").written) == 1
    normal, normal16 = (np.load(tmp_path / dtype / "a_normal.npy") for dtype in ("float32", "float16"))
    assert normal16.dtype == np.float16 and np.abs(normal16.astype(np.float32) - normal).max() <= 2.5e-4
    # eval --predictions reads them as directions (unit length), which float16 keeps to within 0.05°
    read = ct.get_task("normal").read_prediction(tmp_path / "float16" / "a_normal.npy")
    assert read.dtype == np.float32 and np.allclose(np.linalg.norm(read, axis=-1), 1, atol=1e-6)
    a, b = read.astype(np.float64), normal.astype(np.float64)
    angle = np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), (a * b).sum(-1)))  # exact near 0°
    assert angle.max() < 0.05
    with pytest.raises(ConfigError, match="--normal-dtype must be one of float32, float16, got 'int8'"):
        predict([img], ckpt, tmp_path / "p8", normal_dtype="int8")
    assert not (tmp_path / "p8").exists()


def test_eval_predictions_scores_normal_files(synthetic_prepared, tmp_path):
    from crosstask_cli.data.prepared import open_split
    from crosstask_cli.engine.evaluator import evaluate_predictions

    s = open_split(synthetic_prepared, "val")
    pred = tmp_path / "files"
    pred.mkdir()
    for i, name in enumerate(s.files):
        target = np.array(s.targets["normal"][i])
        if i == 0:  # one image predicted 90° off wherever the target is valid: a known error
            target = np.where((target != 0).any(-1, keepdims=True), np.cross(target, [1.0, 0.0, 0.0]), 0)
            target = target / np.maximum(np.linalg.norm(target, axis=-1, keepdims=True), 1e-12)
        np.save(pred / f"{name}_normal.npy", target.astype(np.float32))
    res = evaluate_predictions(pred, synthetic_prepared)
    assert res.tasks == ["normal"] and set(res.metrics) == {"normal"}
    valid = (np.asarray(s.targets["normal"]) != 0).any(-1)
    share_off = valid[0].sum() / valid.sum()  # the pixels of image 0 that are valid and not parallel to x
    assert res.metrics["normal"]["within_30"] == pytest.approx(1 - share_off, abs=0.02)
    d = res.to_dict()
    assert d["segmentation"] == {} and d["depth"] == {} and "normal" in d


def test_export_names_every_task_output(three_task_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'crosstask-cli[onnx]')")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install 'crosstask-cli[onnx]')")
    r = run_cli("export", "--ckpt", three_task_run / "checkpoints/best.pt", "--onnx", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [o.name for o in graph.output] == ["seg_logits", "depth", "normal"]
    assert "normal" in r.output and "max |Δ|" in r.output


def _eval_json(path, seg, depth, normal=None):
    d = {"protocol": "standard", "split": "val", "num_images": 4, "segmentation": seg, "depth": depth}
    if normal is not None:
        d["normal"] = normal
    path.write_text(json.dumps(d))
    return path


def test_delta_m_of_three_tasks_is_over_nine_metrics(tmp_path):
    from crosstask_cli.compare import compare

    normal = {"mean_angle": 20.0, "median_angle": 15.0, "within_11_25": 0.4, "within_22_5": 0.6, "within_30": 0.7}
    run = _eval_json(tmp_path / "mtl.json", {"miou": 0.44, "pixel_acc": 0.8}, {"abs_err": 0.5, "rel_err": 0.2},
                     {**normal, "mean_angle": 18.0, "within_30": 0.77})  # fmt: skip
    seg = _eval_json(tmp_path / "seg.json", {"miou": 0.4, "pixel_acc": 0.8}, {})
    dep = _eval_json(tmp_path / "depth.json", {}, {"abs_err": 0.4, "rel_err": 0.2})
    nor = _eval_json(tmp_path / "normal.json", {}, {}, normal)
    cmp = compare([run], baseline_seg=seg, baseline_depth=dep, baselines={"normal": nor})
    d = cmp.deltas[0]
    assert len(d["terms"]) == 9
    # +10 % mIoU, 0, −25 % abs (worse), 0, +10 % mean angle (better), 0, 0, 0, +10 % within 30°
    assert d["flat"] == pytest.approx((10 - 25 + 10 + 10) / 9)
    assert d["per_task"] == pytest.approx((10 / 2 - 25 / 2 + 20 / 5) / 3)
    md = cmp.to_markdown()
    assert "mean ° ↓" in md and "< 30° ↑" in md and "surface normals baseline: normal" in md
    r = run_cli("compare", run, "--baseline-seg", seg, "--baseline-depth", dep, "--task-baseline", f"normal={nor}")
    assert r.exit_code == 0, r.output
    assert f"{(10 - 25 + 10 + 10) / 9:.2f}" in r.output


def test_files_of_earlier_versions_read_as_seg_and_depth(tiny_run, synthetic_prepared, tmp_path):
    """A prepared dataset without the tasks list and a checkpoint without transfer_pairs (the previous version's)
    are the original's seg and depth, with both TaskTransferNets."""
    import shutil

    from crosstask_cli.data.prepared import read_meta
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

    old = tmp_path / "old"
    shutil.copytree(synthetic_prepared, old)
    meta = json.loads((old / "meta.json").read_text())
    for key in ("tasks", "targets"):
        meta.pop(key)
    (old / "meta.json").write_text(json.dumps(meta))
    assert read_meta(old).tasks == ("seg", "depth")
    c = load_checkpoint(tiny_run / "checkpoints/best.pt")
    c["model_config"].pop("transfer_pairs")
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in c.items() if k not in ("format", "version")})
    model = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    assert model.config.pairs == (("seg", "depth"), ("depth", "seg"))
    res = ct.evaluate(model, old)
    assert res.tasks is None and math.isfinite(res.segmentation["miou"]) and "normal" not in res.to_dict()
    # such a dataset has no normals: asking for them is one line naming the folder, for the dataset and for training
    from crosstask_cli.data.dataset import PreparedDataset
    from crosstask_cli.data.prepare import TrainingData, prepare_training_data
    from crosstask_cli.errors import DatasetError

    with pytest.raises(DatasetError, match=rf"{old}: this synthetic dataset has no surface normals targets"):
        PreparedDataset(old, "val", tasks=("seg", "depth", "normal"))
    want = TrainingData("synthetic", old, meta["height"], meta["width"], meta["num_classes"], tasks=("normal",))
    with pytest.raises(DatasetError, match=r"has no surface normals targets.*render them again"):
        prepare_training_data(want)


def test_sweep_summaries_hold_every_task_compared_metric(tmp_path):
    from crosstask_cli.engine.records import EvalResult
    from crosstask_cli.sweep import _summary

    res = EvalResult("standard", "val", 4, metrics={
        "seg": {"miou": 0.5, "pixel_acc": 0.9, "per_class_iou": {}}, "depth": {"abs_err": 0.1, "rel_err": 0.2},
        "normal": {"mean_angle": 20.0, "median_angle": 15.0, "within_11_25": 0.3, "within_22_5": 0.6,
                   "within_30": float("nan")}})  # fmt: skip
    summary = _summary(res)
    assert summary == {"miou": 0.5, "pixel_acc": 0.9, "abs_err": 0.1, "rel_err": 0.2, "mean_angle": 20.0,
                       "median_angle": 15.0, "within_11_25": 0.3, "within_22_5": 0.6}  # fmt: skip
