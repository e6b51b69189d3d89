"""Label tables and palettes: Cityscapes (official labelIds, 19 train classes, 7 categories) and NYUv2-13."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from crosstask_cli.data.prepare_options import CATEGORY_MAPPINGS  # declared with the prepare options
from crosstask_cli.errors import ConfigError

IGNORE_INDEX = 255


class CityscapesLabel(NamedTuple):
    id: int
    name: str
    train_id: int  # 255 = not evaluated in the 19-class task
    category: str
    cat_id: int  # 0 = void
    color: tuple[int, int, int]


# The official table (cityscapesScripts, labels.py); license plate (id −1) never appears in labelIds PNGs.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel(0, "unlabeled", 255, "void", 0, (0, 0, 0)),
    CityscapesLabel(1, "ego vehicle", 255, "void", 0, (0, 0, 0)),
    CityscapesLabel(2, "rectification border", 255, "void", 0, (0, 0, 0)),
    CityscapesLabel(3, "out of roi", 255, "void", 0, (0, 0, 0)),
    CityscapesLabel(4, "static", 255, "void", 0, (0, 0, 0)),
    CityscapesLabel(5, "dynamic", 255, "void", 0, (111, 74, 0)),
    CityscapesLabel(6, "ground", 255, "void", 0, (81, 0, 81)),
    CityscapesLabel(7, "road", 0, "flat", 1, (128, 64, 128)),
    CityscapesLabel(8, "sidewalk", 1, "flat", 1, (244, 35, 232)),
    CityscapesLabel(9, "parking", 255, "flat", 1, (250, 170, 160)),
    CityscapesLabel(10, "rail track", 255, "flat", 1, (230, 150, 140)),
    CityscapesLabel(11, "building", 2, "construction", 2, (70, 70, 70)),
    CityscapesLabel(12, "wall", 3, "construction", 2, (102, 102, 156)),
    CityscapesLabel(13, "fence", 4, "construction", 2, (190, 153, 153)),
    CityscapesLabel(14, "guard rail", 255, "construction", 2, (180, 165, 180)),
    CityscapesLabel(15, "bridge", 255, "construction", 2, (150, 100, 100)),
    CityscapesLabel(16, "tunnel", 255, "construction", 2, (150, 120, 90)),
    CityscapesLabel(17, "pole", 5, "object", 3, (153, 153, 153)),
    CityscapesLabel(18, "polegroup", 255, "object", 3, (153, 153, 153)),
    CityscapesLabel(19, "traffic light", 6, "object", 3, (250, 170, 30)),
    CityscapesLabel(20, "traffic sign", 7, "object", 3, (220, 220, 0)),
    CityscapesLabel(21, "vegetation", 8, "nature", 4, (107, 142, 35)),
    CityscapesLabel(22, "terrain", 9, "nature", 4, (152, 251, 152)),
    CityscapesLabel(23, "sky", 10, "sky", 5, (70, 130, 180)),
    CityscapesLabel(24, "person", 11, "human", 6, (220, 20, 60)),
    CityscapesLabel(25, "rider", 12, "human", 6, (255, 0, 0)),
    CityscapesLabel(26, "car", 13, "vehicle", 7, (0, 0, 142)),
    CityscapesLabel(27, "truck", 14, "vehicle", 7, (0, 0, 70)),
    CityscapesLabel(28, "bus", 15, "vehicle", 7, (0, 60, 100)),
    CityscapesLabel(29, "caravan", 255, "vehicle", 7, (0, 0, 90)),
    CityscapesLabel(30, "trailer", 255, "vehicle", 7, (0, 0, 110)),
    CityscapesLabel(31, "train", 16, "vehicle", 7, (0, 80, 100)),
    CityscapesLabel(32, "motorcycle", 17, "vehicle", 7, (0, 0, 230)),
    CityscapesLabel(33, "bicycle", 18, "vehicle", 7, (119, 11, 32)),
)
CITYSCAPES_MAX_ID = 33
CITYSCAPES_ID = {label.name: label.id for label in CITYSCAPES_LABELS}

CITYSCAPES_19_NAMES = [
    label.name for label in sorted(CITYSCAPES_LABELS, key=lambda x: x.train_id) if label.train_id < 19
]
CITYSCAPES_19_PALETTE = [
    label.color for label in sorted(CITYSCAPES_LABELS, key=lambda x: x.train_id) if label.train_id < 19
]
CITYSCAPES_7_NAMES = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
# Category colours: the colour of each category's most common class.
CITYSCAPES_7_PALETTE = [
    (128, 64, 128),
    (70, 70, 70),
    (153, 153, 153),
    (107, 142, 35),
    (70, 130, 180),
    (220, 20, 60),
    (0, 0, 142),
]

NYU_13_NAMES = [
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
]  # fmt: skip
NYU_13_PALETTE = [
    (0, 0, 255), (232, 88, 47), (0, 217, 0), (148, 0, 240), (222, 241, 23), (255, 205, 205), (0, 223, 228),
    (106, 135, 204), (116, 28, 41), (240, 35, 235), (0, 166, 156), (249, 139, 0), (225, 228, 194),
]  # fmt: skip


def cityscapes_lookup(num_classes: int, categories: str = "original") -> np.ndarray:
    """uint8 lookup table of length 256: labelId → class index (0..C−1) or 255.

    19 classes: the official trainIds; 7 classes: category id − 1 (void → 255). ``categories`` (7 classes only):
    ``original`` maps every labelId to its category, as the original method and MTAN do, including the labels
    the official evaluation ignores (parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
    trailer); ``official`` maps those to 255, as the official category evaluation does. Ids above 33 map to 255,
    but converters reject them first as outside the table.
    """
    if num_classes not in (7, 19):
        raise ConfigError(f"Cityscapes supports 7 or 19 classes, got {num_classes}")
    if categories not in CATEGORY_MAPPINGS:
        raise ConfigError(f"--categories must be one of {', '.join(CATEGORY_MAPPINGS)}, got {categories!r}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if num_classes == 19:
            value = label.train_id
        elif label.cat_id == 0 or (categories == "official" and label.train_id == IGNORE_INDEX):
            value = IGNORE_INDEX
        else:
            value = label.cat_id - 1
        lut[label.id] = value
    return lut


# The labelId written for each category by `predict --format cityscapes` (7-class models): the category's most
# common evaluated class. The official category scores depend only on the category of each predicted labelId
# (among evaluated ones), so any evaluated label of the category gives the same scores; these are documented.
CATEGORY_REPRESENTATIVE = {
    "flat": "road",
    "construction": "building",
    "object": "pole",
    "nature": "vegetation",
    "sky": "sky",
    "human": "person",
    "vehicle": "car",
}


def has_cityscapes_labels(dataset: str, num_classes: int) -> bool:
    """Whether a dataset's classes are Cityscapes trainIds (19) or categories (7): those with labelIds."""
    from crosstask_cli.data.datasets import dataset_info, dataset_names

    return dataset in dataset_names() and dataset_info(dataset).has_cityscapes_labels and num_classes in (7, 19)


def class_to_label_id(num_classes: int) -> np.ndarray:
    """uint8 lookup table of length 256: class index → Cityscapes labelId, for ``predict --format cityscapes``.

    19 classes: trainId → labelId by the official table; 7 classes: category → the labelId of
    :data:`CATEGORY_REPRESENTATIVE`. Every other index (255 = no class) → 0 ("unlabeled"), which the official
    evaluator counts as a miss.
    """
    if num_classes not in (7, 19):
        raise ConfigError(f"Cityscapes labelIds exist for 7 or 19 classes, got {num_classes}")
    lut = np.zeros(256, dtype=np.uint8)
    if num_classes == 19:
        for label in CITYSCAPES_LABELS:
            if label.train_id < 19:
                lut[label.train_id] = label.id
    else:
        for i, category in enumerate(CITYSCAPES_7_NAMES):
            lut[i] = CITYSCAPES_ID[CATEGORY_REPRESENTATIVE[category]]
    return lut


def class_info(dataset: str, num_classes: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and palette (RGB) for a dataset's label set (its family in the dataset registry)."""
    from crosstask_cli.data.datasets import dataset_info

    tables = {
        ("cityscapes", 19): (CITYSCAPES_19_NAMES, CITYSCAPES_19_PALETTE),
        ("cityscapes", 7): (CITYSCAPES_7_NAMES, CITYSCAPES_7_PALETTE),
        ("nyu", 13): (NYU_13_NAMES, NYU_13_PALETTE),
    }
    found = tables.get((dataset_info(dataset).labels, num_classes))
    if found is None:
        raise ConfigError(f"no label set for {dataset} with {num_classes} classes")
    return list(found[0]), list(found[1])


def colorize(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 RGB; ignore (255) and out-of-range ids are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[labels]
