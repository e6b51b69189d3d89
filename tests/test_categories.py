"""`prepare cityscapes --categories original|official`: the 7-class mapping of the labels the official evaluation
ignores."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from helpers import make_mtan, run_cli

from crosstask_cli.data.labels import cityscapes_lookup
from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes
from crosstask_cli.data.prepared import open_split, read_meta

# labelId → category index (original) for the labels whose trainId is 255 but whose category is not void
IGNORED_IN_EVAL = {9: 0, 10: 0, 14: 1, 15: 1, 16: 1, 18: 2, 29: 6, 30: 6}  # parking … trailer
KEPT = {7: 0, 11: 1, 17: 2, 21: 3, 23: 4, 24: 5, 26: 6}  # road, building, pole, vegetation, sky, person, car


def test_lookup_tables_by_the_official_label_table():
    original, official = cityscapes_lookup(7), cityscapes_lookup(7, "official")
    for label_id, category in IGNORED_IN_EVAL.items():
        assert original[label_id] == category and official[label_id] == 255, label_id
    for label_id, category in KEPT.items():
        assert original[label_id] == official[label_id] == category, label_id
    assert original[0] == official[0] == 255  # unlabeled stays void either way
    assert (np.nonzero(original != official)[0] == sorted(IGNORED_IN_EVAL)).all()
    with pytest.raises(ValueError, match="--categories must be one of original, official"):
        cityscapes_lookup(7, "coarse")


@pytest.fixture
def raw_with_every_label(synthetic_raw, tmp_path):
    """A copy of the synthetic raw set whose first training label image holds stripes of chosen labelIds."""
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    label = sorted((raw / "gtFine/train").rglob("*_gtFine_labelIds.png"))[0]
    h, w = cv2.imread(str(label), cv2.IMREAD_UNCHANGED).shape
    ids = [*IGNORED_IN_EVAL, *KEPT]
    stripes = np.repeat(np.array(ids, dtype=np.uint8), -(-w // len(ids)))[:w]
    cv2.imwrite(str(label), np.tile(stripes, (h, 1)))
    return raw, label.name.replace("_gtFine_labelIds.png", ""), stripes


def test_prepare_official_categories_ignores_what_the_official_evaluation_ignores(raw_with_every_label, tmp_path):
    raw, stem, stripes = raw_with_every_label
    h, w = 64, 128  # the raw size: no resizing, so every pixel keeps its stripe
    labels = {}
    for categories in ("original", "official"):
        out = prepare_cityscapes(raw, tmp_path / categories, PrepareOptions(h, w, 7, categories=categories))
        assert read_meta(out).categories == categories
        split = open_split(out, "train")
        labels[categories] = np.asarray(split.labels[split.files.index(stem)])
    row = {c: labels[c][0] for c in labels}
    for x, label_id in enumerate(stripes):
        if label_id in IGNORED_IN_EVAL:
            assert row["original"][x] == IGNORED_IN_EVAL[label_id] and row["official"][x] == 255
        else:
            assert row["original"][x] == row["official"][x] == KEPT[label_id]


def test_categories_cli_and_its_refusals(raw_with_every_label, tmp_path):
    raw, _, _ = raw_with_every_label
    r = run_cli("prepare", "cityscapes", "--src", raw, "--out", tmp_path / "off", "--height", "32", "--width", "64",
                "--categories", "official")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "official categories" in r.output
    r = run_cli("prepare", "cityscapes", "--src", raw, "--out", tmp_path / "c19", "--num-classes", "19",
                "--categories", "official")  # fmt: skip
    assert r.exit_code == 1 and "chooses the 7-class mapping" in r.output
    assert not (tmp_path / "c19").exists()
    r = run_cli("prepare", "cityscapes", "--src", raw, "--out", tmp_path / "bad", "--categories", "coarse")
    assert r.exit_code == 1 and "--categories must be one of original, official" in r.output


def test_official_categories_need_the_raw_layout(tmp_path):
    src = make_mtan(tmp_path / "mtan", "cityscapes")
    with pytest.raises(ValueError, match="MTAN's label_7 holds the original category mapping"):
        prepare_cityscapes(src, tmp_path / "out", PrepareOptions(8, 16, 7, categories="official"))
    assert not (tmp_path / "out").exists()
