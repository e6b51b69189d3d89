"""The official Cityscapes tools (``cityscapesscripts``) as the oracle: predict --format cityscapes passes their
file matcher, and crosstask's scores equal their evaluator's (class/category IoU and iIoU)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_cli

import crosstask_cli as ct
from crosstask_cli.cityscapes_scores import CityscapesScores
from crosstask_cli.data.labels import cityscapes_lookup, class_to_label_id
from crosstask_cli.engine.evaluator import evaluate_predictions
from crosstask_cli.predictions import MANIFEST

ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")

KEYS = ("averageScoreClasses", "averageScoreInstClasses", "averageScoreCategories", "averageScoreInstCategories")


@pytest.fixture(autouse=True)
def _numpy2_shim(monkeypatch):
    # cityscapesscripts 2.3 calls np.in1d, which NumPy 2.4 removed; np.isin(...).ravel() is its documented equal.
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(np, "in1d", lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(), raising=False)


def official(pred_files: list[Path], gt_files: list[Path]) -> dict:
    args = copy.copy(ev.args)
    args.JSONOutput, args.quiet, args.evalInstLevelScore = False, True, True
    args.predictionPath, args.predictionWalk = None, None
    return ev.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], args)


def official_matches(pred_dir: Path, gt_files: list[Path]) -> list[Path]:
    """The prediction file the official matcher picks for each ground truth (it exits on none or several)."""
    args = copy.copy(ev.args)
    args.predictionPath, args.predictionWalk = str(pred_dir), None
    return [Path(ev.getPrediction(args, str(g))) for g in gt_files]


def assert_same_scores(ours: dict, theirs: dict, levels=("class", "category")) -> None:
    for key in KEYS:
        if key in ours:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    groups = {"class": ("classScores", "classInstScores"), "category": ("categoryScores", "categoryInstScores")}
    for level in levels:
        for group in groups[level]:
            for name, v in ours[group].items():
                o = theirs[group][name]
                v = float("nan") if v is None else v  # NaN is null in the JSON
                assert (np.isnan(v) and np.isnan(o)) or v == pytest.approx(o, abs=1e-12), (group, name)


def test_scores_equal_the_official_evaluator_on_hand_made_predictions(tmp_path):
    """Random ground truth with every labelId (ignored ones included), instances of evaluated and ignored
    classes (caravan), predictions with 255 ("no class": labelId 0 in the file), one class absent from both."""
    rng = np.random.default_rng(0)
    scores = {19: CityscapesScores(19), 7: CityscapesScores(7)}
    gts, preds = [], {19: [], 7: []}
    for i in range(3):
        h, w = 40, 60
        gt = rng.integers(0, 34, (h, w)).astype(np.uint8)
        gt[gt == 31] = 0  # no 'train' anywhere: an absent class (NaN in both)
        inst = gt.astype(np.int32)
        for k in range(5):
            label = rng.choice([24, 25, 26, 28, 29, 33])
            y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
            gt[y : y + 10, x : x + 10] = label
            inst[y : y + 10, x : x + 10] = label * 1000 + k
        noise = rng.random((h, w)) < 0.5
        p19 = cityscapes_lookup(19)[gt]
        p19[noise] = rng.integers(0, 16, noise.sum())  # trainIds 0..15: never 'train' (16)
        p19[rng.random((h, w)) < 0.05] = 255
        p7 = cityscapes_lookup(7)[gt]
        p7[noise] = rng.integers(0, 7, noise.sum())
        p7[rng.random((h, w)) < 0.05] = 255
        stem = f"aachen_000000_{i:06d}"
        gts.append(tmp_path / f"{stem}_gtFine_labelIds.png")
        cv2.imwrite(str(gts[-1]), gt)
        cv2.imwrite(str(tmp_path / f"{stem}_gtFine_instanceIds.png"), inst.astype(np.uint16))
        for n, p in ((19, p19), (7, p7)):
            preds[n].append(tmp_path / f"p{n}" / f"{stem}_labelIds.png")
            preds[n][-1].parent.mkdir(exist_ok=True)
            cv2.imwrite(str(preds[n][-1]), class_to_label_id(n)[p])
            scores[n].update(p, gt, inst)
    ours19 = scores[19].compute()
    assert np.isnan(ours19["classScores"]["train"]) and np.isnan(ours19["classInstScores"]["train"])
    assert_same_scores(ours19, official(preds[19], gts))
    assert_same_scores(scores[7].compute(), official(preds[7], gts), levels=("category",))


@pytest.fixture(scope="module")
def run19(synthetic_raw, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs19") / "r"
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=1, enc_layers=18,
                                     batch_size=4, workers=0, max_steps_per_epoch=2, num_classes=19)  # fmt: skip
    ct.train(cfg, run_dir=run)
    return run


@pytest.mark.parametrize("classes", [19, 7])
def test_predict_cityscapes_format_and_full_resolution_eval_agree_with_the_official_tools(
    classes, run19, tiny_run, synthetic_raw, tmp_path
):
    ckpt = (run19 if classes == 19 else tiny_run) / "checkpoints/best.pt"
    images = synthetic_raw / "leftImg8bit" / "val"
    gts = sorted((synthetic_raw / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    out = tmp_path / "submit"
    r = run_cli(
        "predict", images, "--ckpt", ckpt, "--out", out, "--format", "cityscapes", "--recursive", "--amp", "off"
    )
    assert r.exit_code == 0, r.output

    # exactly one labelIds PNG per input, at its size, in its city folder, plus the manifest
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    inputs = sorted(images.rglob("*.png"))
    assert files == sorted([MANIFEST] + [f"synthburg/{p.stem}_labelIds.png" for p in inputs])
    assert json.loads((out / MANIFEST).read_text())["format"] == "cityscapes"
    for p in inputs:
        ids = cv2.imread(str(out / "synthburg" / f"{p.stem}_labelIds.png"), cv2.IMREAD_UNCHANGED)
        assert ids.shape == cv2.imread(str(p)).shape[:2] and ids.dtype == np.uint8
        assert set(np.unique(ids)) <= set(class_to_label_id(classes)[:classes].tolist())
    matched = official_matches(out, gts)
    assert [m.name.split("_leftImg8bit")[0] for m in matched] == [g.name.split("_gtFine")[0] for g in gts]
    theirs = official(matched, gts)

    # the same model scored by crosstask at full resolution: equal to the official evaluator on predict's files
    report = tmp_path / "full.json"
    r = run_cli("eval", "--ckpt", ckpt, "--data", synthetic_raw, "--full-resolution", "--json", report, "--amp", "off")
    assert r.exit_code == 0, r.output
    assert "official Cityscapes scores" in r.output
    res = json.loads(report.read_text())
    assert res["cityscapes"]["instances"] is True and res["num_images"] == len(gts)
    assert_same_scores(res["cityscapes"], theirs, ("class", "category") if classes == 19 else ("category",))
    if classes == 19:
        assert res["segmentation"]["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-12)
    assert set(res["depth"]) >= {"abs_err", "rel_err"}

    # eval --predictions reads predict's own output (labelIds, city folders, key matching) at ground-truth size
    if classes == 19:
        from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes

        prepared = prepare_cityscapes(
            synthetic_raw, tmp_path / "full", PrepareOptions(64, 128, 19), dataset="synthetic"
        )
        res = evaluate_predictions(out, prepared)
        assert res.tasks == ["seg"] and res.depth == {}
        assert res.segmentation["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-12)
