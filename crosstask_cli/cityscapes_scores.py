"""The official Cityscapes pixel-level scores (cityscapesScripts' ``evalPixelLevelSemanticLabeling``), computed
from a model's class-id predictions against full-size ground-truth labelIds (and instanceIds), streaming.

Definitions, as the official evaluator's (labels with ``ignoreInEval`` are the ones whose trainId is 255):

- class IoU = TP / (TP + FP + FN) over pixels whose ground truth is evaluated; a pixel predicted as a label that
  is not evaluated (here: any id outside the model's classes) is a false negative of its ground truth and a false
  positive of nothing. The class average is over classes with TP + FP + FN > 0.
- category IoU: the same with every evaluated label replaced by its category (predicting ``car`` on a ``truck``
  pixel is a true positive for ``vehicle``).
- iIoU = iTP / (iTP + FP + iFN) for the classes with instances (person, rider, car, truck, bus, train,
  motorcycle, bicycle): each ground-truth instance's pixels are weighted by ``avgClassSize[class] / instance
  size``; FP is unweighted, from the confusion matrix. Category iIoU likewise for ``human`` and ``vehicle``.

A 19-class model's classes are trainIds; a 7-class model's are categories, for which only the category scores
exist (ground truth mapped by the official category definition, whatever mapping the model was trained with).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crosstask_cli.data.labels import (
    CITYSCAPES_7_NAMES,
    CITYSCAPES_19_NAMES,
    CITYSCAPES_LABELS,
    IGNORE_INDEX,
    cityscapes_lookup,
)
from crosstask_cli.errors import ConfigError
from crosstask_cli.metrics import ConfusionMatrix

# Mean instance size (pixels at 2048×1024) per class over the training set, as the official evaluator's table.
AVG_CLASS_SIZE = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}
INSTANCE_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")  # evaluated ones
INSTANCE_CATEGORIES = ("human", "vehicle")  # categories whose labels all have instances


def _instance_tables(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per labelId (0..33): the model class an instance of it is (−1 if no iIoU), its category index (0..6, −1),
    its weight numerator (avgClassSize) and, per model class, its category index."""
    klass = np.full(34, -1, np.int64)
    category = np.full(34, -1, np.int64)
    size = np.zeros(34, np.float64)
    for label in CITYSCAPES_LABELS:
        if label.name in INSTANCE_CLASSES:
            klass[label.id] = label.train_id if num_classes == 19 else label.cat_id - 1
            category[label.id] = label.cat_id - 1
            size[label.id] = AVG_CLASS_SIZE[label.name]
    if num_classes == 19:
        class_category = np.array(
            [next(lb.cat_id - 1 for lb in CITYSCAPES_LABELS if lb.train_id == t) for t in range(19)], np.int64
        )
    else:
        class_category = np.arange(7, dtype=np.int64)
    return klass, category, size, class_category


class CityscapesScores:
    """Streaming official scores for a 19-class (trainIds) or 7-class (categories) model.

    ``update(pred, label_ids, instance_ids=None)``: pred H×W (or B×H×W) class ids, any id outside 0..C−1 a miss;
    label_ids the ground-truth labelIds (0..33) of the same size; instance_ids the ``*_instanceIds.png`` values
    (labelId·1000 + k for instances). iIoU is reported only when every update had instance ids.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes not in (7, 19):
            raise ConfigError(f"the official Cityscapes scores exist for 7 or 19 classes, got {num_classes}")
        self.num_classes = num_classes
        self.names = list(CITYSCAPES_19_NAMES if num_classes == 19 else CITYSCAPES_7_NAMES)
        # official evaluation: a 7-class model is scored against the official categories
        self.lookup = torch.from_numpy(cityscapes_lookup(num_classes, "official" if num_classes == 7 else "original"))
        self.cm = ConfusionMatrix(num_classes, IGNORE_INDEX, self.names)
        self.klass, self.category, self.size, self.class_category = _instance_tables(num_classes)
        self.inst_tp = np.zeros(num_classes)  # weighted, per model class
        self.inst_fn = np.zeros(num_classes)
        self.cat_tp = np.zeros(7)  # weighted, per category
        self.cat_fn = np.zeros(7)
        self.with_instances = True
        self.images = 0

    def update(self, pred: np.ndarray, label_ids: np.ndarray, instance_ids: np.ndarray | None = None) -> None:
        pred = np.asarray(pred)
        label_ids = np.asarray(label_ids)
        if pred.shape != label_ids.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {label_ids.shape} differ in shape")
        target = self.lookup[torch.from_numpy(label_ids.astype(np.uint8, copy=False)).long()]
        self.cm.update(torch.from_numpy(pred.astype(np.int64, copy=False)), target)
        self.images += 1 if pred.ndim == 2 else pred.shape[0]
        if instance_ids is None:
            self.with_instances = False
            return
        self._update_instances(pred, np.asarray(instance_ids))

    def _update_instances(self, pred: np.ndarray, inst: np.ndarray) -> None:
        sel = inst > 1000
        ids = inst[sel]
        label = ids // 1000
        label = np.where(label < 34, label, 0)
        klass = self.klass[label]
        keep = klass >= 0  # instances of evaluated classes with instances
        if not keep.any():
            return
        ids, label, klass, p = ids[keep], label[keep], klass[keep], pred[sel][keep].astype(np.int64)
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        inst_size = np.bincount(inverse).astype(np.float64)
        hit = np.bincount(inverse, weights=(p == klass)).astype(np.float64)
        valid_p = (p >= 0) & (p < self.num_classes)
        p_cat = np.where(valid_p, self.class_category[np.clip(p, 0, self.num_classes - 1)], -1)
        cat_hit = np.bincount(inverse, weights=(p_cat == self.category[label])).astype(np.float64)
        weight = self.size[label[first]] / inst_size
        np.add.at(self.inst_tp, klass[first], hit * weight)
        np.add.at(self.inst_fn, klass[first], (inst_size - hit) * weight)
        np.add.at(self.cat_tp, self.category[label[first]], cat_hit * weight)
        np.add.at(self.cat_fn, self.category[label[first]], (inst_size - cat_hit) * weight)

    def _category_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.cm.matrix.cpu().numpy().astype(np.float64)
        misses = self.cm.misses.cpu().numpy().astype(np.float64)
        if self.num_classes == 7:
            return m, misses
        onehot = np.eye(7)[self.class_category]  # 19×7
        return onehot.T @ m @ onehot, onehot.T @ misses

    @staticmethod
    def _iou(m: np.ndarray, misses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(IoU per row class, FP per class) of a confusion matrix with misses."""
        tp = np.diag(m)
        fp = m.sum(0) - tp
        denom = m.sum(1) + misses + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan), fp

    @staticmethod
    def _iiou(tp: np.ndarray, fn: np.ndarray, fp: np.ndarray, defined: np.ndarray) -> np.ndarray:
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(defined & (denom > 0), tp / denom, np.nan)

    def compute(self) -> dict:
        """The official result names: classScores / classInstScores (19 classes), categoryScores /
        categoryInstScores, and their averageScore* (mean over defined values); NaN where undefined."""
        self.cm.check_targets()
        cat_m, cat_misses = self._category_matrix()
        cat_iou, cat_fp = self._iou(cat_m, cat_misses)
        has_cat_inst = np.array([n in INSTANCE_CATEGORIES for n in CITYSCAPES_7_NAMES])
        cat_iiou = self._iiou(self.cat_tp, self.cat_fn, cat_fp, has_cat_inst & self.with_instances)
        out: dict = {}
        if self.num_classes == 19:
            m = self.cm.matrix.cpu().numpy().astype(np.float64)
            iou, fp = self._iou(m, self.cm.misses.cpu().numpy().astype(np.float64))
            has_inst = np.array([n in INSTANCE_CLASSES for n in self.names])
            iiou = self._iiou(self.inst_tp, self.inst_fn, fp, has_inst & self.with_instances)
            out["classScores"] = dict(zip(self.names, iou.tolist(), strict=True))
            out["classInstScores"] = {n: v for n, v, h in zip(self.names, iiou.tolist(), has_inst, strict=True) if h}
            out["averageScoreClasses"] = _nanmean(iou)
            out["averageScoreInstClasses"] = _nanmean(iiou)
        out["categoryScores"] = dict(zip(CITYSCAPES_7_NAMES, cat_iou.tolist(), strict=True))
        out["categoryInstScores"] = {
            n: v for n, v, h in zip(CITYSCAPES_7_NAMES, cat_iiou.tolist(), has_cat_inst, strict=True) if h
        }
        out["averageScoreCategories"] = _nanmean(cat_iou)
        out["averageScoreInstCategories"] = _nanmean(cat_iiou)
        out["instances"] = self.with_instances
        return out


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan
