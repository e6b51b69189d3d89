from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from helpers import TINY, run_cli

import crosstask_cli as ct
from crosstask_cli.data.prepared import open_split
from crosstask_cli.engine.evaluator import evaluate_predictions
from crosstask_cli.engine.trainer import RunDirError


def test_cli_train_then_eval_json(synthetic_raw, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", run, "--epochs", "2", *TINY,
                "--weighting", "uncertainty", "--tdep-loss", "ssim", "--tseg-loss", "kl")  # fmt: skip
    assert r.exit_code == 0, r.output
    for f in (
        "config.json",
        "metrics.csv",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "plots/losses.png",
        "plots/metrics.png",
    ):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train_seg", "train_depth", "train_tseg", "train_tdepth", "lr", "weight_seg_task", "val_miou",
                "val_abs_err", "val_rel_err", "val_pixel_acc", "seconds"):  # fmt: skip
        assert key in rows[0], key
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["optim"]["weighting"] == "uncertainty" and cfg["loss"]["tdep_loss"] == "ssim"
    assert cfg["loss"]["alpha"] == 0.01

    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)  # the contract: weights-only loadable
    assert ckpt["format"] == "crosstask-checkpoint" and ckpt["version"] == 1 and ckpt["epoch"] == 2
    assert {"model_config", "dataset", "train_config", "model", "optimizer", "scheduler", "rng", "metrics"} <= set(ckpt)
    assert ckpt["dataset"]["class_names"][0] == "flat" and ckpt["dataset"]["depth"]["kind"] == "inverse"
    assert ckpt["weighting"]["state"]["log_vars"].shape == (2,)  # uncertainty weights are checkpointed

    out = tmp_path / "eval.json"
    r = run_cli("eval", "--ckpt", run / "checkpoints/best.pt", "--json", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["protocol"] == "standard" and res["split"] == "val" and res["num_images"] == 4
    assert set(res["segmentation"]) >= {"miou", "pixel_acc", "per_class_iou"}
    assert set(res["segmentation"]["per_class_iou"]) == {
        "flat",
        "construction",
        "object",
        "nature",
        "sky",
        "human",
        "vehicle",
    }
    # inverse depth (the synthetic scenes' Cityscapes-style disparity): no iRMSE, whose reciprocal would be depth
    assert set(res["depth"]) == {"abs_err", "rel_err", "sq_rel", "rmse", "rmse_log"} | {
        "delta1",
        "delta2",
        "delta3",
    }
    assert 0 <= res["segmentation"]["miou"] <= 1 and 0 <= res["consistency"]["seg_agreement"] <= 1
    assert "mIoU" in r.output and "per-class IoU" in r.output

    r = run_cli("eval", "--ckpt", run / "checkpoints/best.pt", "--protocol", "original", "--json", out)
    assert r.exit_code == 0 and json.loads(out.read_text())["protocol"] == "original"
    r = run_cli("info", run / "checkpoints/last.pt")
    assert r.exit_code == 0 and "ResNet-18" in r.output and "resumable" in r.output


def _write_predictions(pred_dir, split, perturb=False):
    for i, sid in enumerate(split.files):
        (pred_dir / sid).parent.mkdir(parents=True, exist_ok=True)
        seg = np.array(split.labels[i])
        seg[seg == 255] = 0
        depth = np.array(split.depth[i])
        if perturb and i == 0:
            seg[:] = 0
            depth = depth * 2
        cv2.imwrite(str(pred_dir / f"{sid}_seg.png"), seg)
        np.save(pred_dir / f"{sid}_depth.npy", depth)


def test_eval_predictions_against_hand_made_files(synthetic_prepared, tmp_path):
    split = open_split(synthetic_prepared, "val")
    perfect = tmp_path / "perfect"
    _write_predictions(perfect, split)
    res = evaluate_predictions(perfect, synthetic_prepared, "val")
    assert res.segmentation["miou"] == 1.0 and res.segmentation["pixel_acc"] == 1.0
    assert res.depth["abs_err"] == 0.0 and res.depth["delta1"] == 1.0

    worse = tmp_path / "worse"
    _write_predictions(worse, split, perturb=True)
    res = evaluate_predictions(worse, synthetic_prepared, "val")
    labels = np.asarray(split.labels).astype(np.int64)
    keep = labels != 255
    wrong = ((labels[0] != 0) & keep[0]).sum()
    assert res.segmentation["pixel_acc"] == pytest.approx(1 - wrong / keep.sum())
    d = np.asarray(split.depth)
    valid = d > 0
    assert res.depth["rel_err"] == pytest.approx(valid[0].sum() / valid.sum())  # |2t − t| / t = 1 on image 0
    r = run_cli("eval", "--predictions", worse, "--data", synthetic_prepared, "--json", tmp_path / "w.json")
    assert r.exit_code == 0 and json.loads((tmp_path / "w.json").read_text())["num_images"] == 4

    (perfect / f"{split.files[1]}_depth.npy").unlink()
    r = run_cli("eval", "--predictions", perfect, "--data", synthetic_prepared)
    assert r.exit_code == 1 and "missing depth prediction" in r.output


def _weights(run):
    return torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("weighting", ["fixed", pytest.param("gradnorm", marks=pytest.mark.slow)])  # 11 s each
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(synthetic_raw, tmp_path, weighting):
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=2, enc_layers=18,
                                     batch_size=4, workers=0, max_steps_per_epoch=2, weighting=weighting)  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "straight")
    ct.train(cfg.replace(epochs=1), run_dir=tmp_path / "stopped")
    ct.train(cfg, run_dir=tmp_path / "stopped", resume=True, resume_overrides={"epochs": 2})
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "stopped/metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_run_directory_rules(synthetic_raw, tiny_run, tmp_path):
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=1, enc_layers=18,
                                     batch_size=4, workers=0, max_steps_per_epoch=1)  # fmt: skip
    with pytest.raises(RunDirError, match="already holds a run"):
        ct.train(cfg, run_dir=tiny_run)
    with pytest.raises(RunDirError, match="holds no checkpoint"):
        ct.train(cfg, run_dir=tmp_path / "empty", resume=True)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--enc-layers", "20"], "--enc-layers must be one of 18, 34, 50, 101, 152"),
        (["--epochs", "-3"], "--epochs must be a positive integer"),
        (["--lp", "l3"], "--lp must be one of l1, mse, logl1, smoothl1"),
        (["--tseg-loss", "cross"], "--tseg-loss must be one of ce, kl, soft-kl"),
        (["--height", "30"], "multiples of 8"),
        (["--weighting", "magic"], "--weighting must be one of"),
        (["--num-classes", "13"], "7 or 19 classes"),
        (["--optimizer", "rmsprop"], "--optimizer must be one of adam, sgd"),
        (["--gradnorm-params", "layer"], "--gradnorm-params must be one of conv, block"),
    ],
)
def test_invalid_flag_values_get_one_line_errors(synthetic_raw, tmp_path, args, message):
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", tmp_path / "r", *TINY, *args)
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_sgd_and_gradnorm_options_reach_the_run(synthetic_raw, tmp_path):
    run = tmp_path / "sgd"
    r = run_cli(
        "train", "synthetic", "--data", synthetic_raw, "--run-dir", run, *TINY, "--optimizer", "sgd",
        "--weighting", "gradnorm", "--gradnorm-params", "block", "--gradnorm-alpha", "0.5",
        "--epochs", "1", "--max-steps-per-epoch", "2",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["optim"]["optimizer"], cfg["optim"]["gradnorm_params"], cfg["optim"]["gradnorm_alpha"]) == (
        "sgd",
        "block",
        0.5,
    )
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9  # SGD's state, not Adam's
    (own,) = ckpt["weighting"]["optimizers"]  # GradNorm's own Adam, checkpointed for resume
    assert own["param_groups"][0]["betas"] == (0.9, 0.999) and own["state"]


def test_resuming_a_crosstask_0_1_run_is_refused_with_the_reason(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    last = run / "checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["model_config"]["decoder_align_corners"]  # as crosstask 0.1.0 wrote it
    torch.save(ckpt, last)
    r = run_cli("train", "synthetic", "--run-dir", run, "--resume", "--epochs", "2")
    assert r.exit_code == 1 and "align_corners=False" in r.output and "Traceback" not in r.output


def test_cli_train_bad_data_and_run_dirs(tmp_path, tiny_run, synthetic_raw):
    r = run_cli("train", "cityscapes", "--data", tmp_path / "nope", "--run-dir", tmp_path / "r", *TINY)
    assert r.exit_code == 1 and "not found" in r.output and "Traceback" not in r.output
    (tmp_path / "junk").mkdir()
    r = run_cli("train", "cityscapes", "--data", tmp_path / "junk", "--run-dir", tmp_path / "r", *TINY)
    assert r.exit_code == 1 and "matches no known dataset layout" in r.output
    r = run_cli("train", "synthetic", "--run-dir", tmp_path / "empty", "--resume")
    assert r.exit_code == 1 and "holds no checkpoint" in r.output
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", tiny_run, *TINY)
    assert r.exit_code == 1 and "--resume" in r.output and "--force" in r.output
    r = run_cli("train", "synthetic", "--run-dir", tiny_run, "--resume", "--lr", "0.1")
    assert r.exit_code == 1 and "cannot change --lr" in r.output


def test_eval_rejects_data_that_does_not_match_the_checkpoint(tiny_run, tmp_path):
    from helpers import make_mtan

    nyu = make_mtan(tmp_path / "nyu", "nyu", h=32, w=64)
    r = run_cli("eval", "--ckpt", tiny_run / "checkpoints/best.pt", "--data", nyu)
    assert r.exit_code == 1 and "13 classes" in r.output
    r = run_cli("eval", "--ckpt", tmp_path / "missing.pt")
    assert r.exit_code == 1 and "no such checkpoint" in r.output


def test_config_file_reproduces_a_run(tiny_run, tmp_path):
    r = run_cli("train", "synthetic", "--config", tiny_run / "config.json", "--run-dir", tmp_path / "again")
    assert r.exit_code == 0, r.output
    a = json.loads((tiny_run / "config.json").read_text())
    b = json.loads((tmp_path / "again/config.json").read_text())
    assert a["runtime"].pop("run_dir") != b["runtime"].pop("run_dir")
    assert a == b
    assert torch.equal(
        _weights(tiny_run)["seg_decoder.head.weight"], _weights(tmp_path / "again")["seg_decoder.head.weight"]
    )


def test_demo_pipeline_in_miniature(tmp_path):
    from crosstask_cli.demo import DemoSettings, run_demo

    s = DemoSettings(train=8, val=4, holdout=4, render_height=32, render_width=64, height=32, width=64, epochs=1,
                     batch_size=4, predict_count=2, workers=0)  # fmt: skip
    res = run_demo(tmp_path / "demo", s)
    prepared = json.loads((res.artefacts["prepared dataset (train / holdout / val)"] / "meta.json").read_text())
    assert prepared["splits"] == {"train": 8, "holdout": 4, "val": 4}
    with open(res.artefacts["run directory"] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["val_split"] == "holdout" for r in rows)  # the reported split chose nothing
    for name in ("best checkpoint", "evaluation (JSON)", "sample grid"):
        assert res.artefacts[name].is_file(), name
    assert len(list((tmp_path / "demo/panels").rglob("*_panel.png"))) == 2
    assert 0 <= res.metrics["segmentation"]["miou"] <= 1


@pytest.mark.slow
def test_full_demo_learns(tmp_path):
    """The real demo (several minutes): mIoU ≥ 0.5 on the synthetic 7-class val split."""
    from crosstask_cli.demo import run_demo

    res = run_demo(tmp_path / "demo")
    assert res.metrics["segmentation"]["miou"] >= 0.5
