"""Torch dataset over a prepared split, with the method's augmentation.

Returns (image 3×H×W float32 normalised with ImageNet statistics, {task: target}, index): each task's target as
its spec makes it (seg H×W int64 with 255 = ignore, depth 1×H×W float32 in dataset units with 0 = invalid,
normal 3×H×W float32 unit vectors with the zero vector = invalid). A DataLoader batches them into
(B×3×H×W, {task: B×…}, B indices).

Augmentation (as the original, see README "Differences from the original"): random scale s ∈ {1.0, 1.2, 1.5}:
crop an (H/s)×(W/s) window at a random place and resize it back (image bilinear, targets nearest at pixel
centres); each task rescales its values as its spec says (metric depth is divided by s, inverse depth
multiplied by s: the object appears s times closer; normals do not change). Then a horizontal flip with p = 0.5
(normals negate their x component). Randomness comes from a generator seeded by (seed, epoch, index), so results
are identical whatever the number of DataLoader workers or their order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from crosstask_cli.data.prepared import PreparedSplit, open_split, read_meta, verify_split
from crosstask_cli.data.resize import resize_nearest
from crosstask_cli.errors import DatasetError
from crosstask_cli.tasks import TaskContext, get_task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALES = (1.0, 1.2, 1.5)


def normalisation() -> dict:
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "RGB in [0, 1]"}


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """B×H×W×3 or H×W×3 uint8 → …×3×H×W float32 normalised."""
    x = images_uint8.float().div_(255.0)
    x = x.movedim(-1, -3)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def scale_crop(
    image: np.ndarray, labels: np.ndarray, depth: np.ndarray, scale: float, top: float, left: float, depth_kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop a 1/scale window whose corner is at fractions (top, left) of the free range and resize it back (image,
    seg labels and depth; :func:`scale_crop_targets` does it for any tasks)."""
    image, targets = scale_crop_targets(image, {"seg": labels, "depth": depth}, scale, top, left,
                                        TaskContext(depth_kind=depth_kind))  # fmt: skip
    return image, targets["seg"], targets["depth"]


def scale_crop_targets(
    image: np.ndarray, targets: dict[str, np.ndarray], scale: float, top: float, left: float, ctx: TaskContext
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The scale augmentation of one sample: the same 1/scale window of the image (bilinear) and of every task's
    array (nearest at pixel centres), values rescaled by each task's spec."""
    import cv2

    h, w = image.shape[:2]
    ch, cw = int(round(h / scale)), int(round(w / scale))
    y0, x0 = int(round(top * (h - ch))), int(round(left * (w - cw)))
    img = cv2.resize(np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw]), (w, h), interpolation=cv2.INTER_LINEAR)
    out = {}
    for task, array in targets.items():
        crop = resize_nearest(array[y0 : y0 + ch, x0 : x0 + cw], h, w)
        out[task] = get_task(task).rescale(crop, scale, ctx)
    return img, out


class PreparedDataset(Dataset):
    """A split of a prepared dataset (see :mod:`crosstask_cli.data.prepared`)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        augment: bool = False,
        seed: int = 0,
        verify: bool = False,
        tasks: tuple[str, ...] | None = None,
    ) -> None:
        """Opening checks the split (:func:`~crosstask_cli.data.prepared.verify_split`): a sample of its values, or
        every value with ``verify``. ``tasks``: the targets to load (default: every task the dataset has); a task
        the dataset lacks is a DatasetError naming it."""
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.split_name = split
        if tasks is None:
            tasks = self.meta.tasks
        lacking = [t for t in tasks if t not in self.meta.tasks]
        if lacking:
            names = ", ".join(get_task(t).title for t in lacking)
            raise DatasetError(
                f"{self.root}: this {self.meta.dataset} dataset has no {names} targets (its tasks: "
                f"{', '.join(self.meta.tasks)}); prepare it again with this crosstask, or train other tasks"
            )
        self.tasks = tuple(tasks)
        self.ctx = self.meta.context
        self._split: PreparedSplit | None = None
        verify_split(self.split, self.meta, full=verify)
        self.length = len(self.split)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.depth_kind = self.meta.depth_kind
        # (image H×W×3 uint8, index) → corrupted copy, applied before normalisation (eval --corrupt)
        self.corrupt: Callable[[np.ndarray, int], np.ndarray] | None = None

    @property
    def split(self) -> PreparedSplit:
        # Opened lazily so that each DataLoader worker maps the files itself.
        if self._split is None:
            self._split = open_split(self.root, self.split_name)
        return self._split

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_split"] = None
        return state

    @property
    def files(self) -> list[str]:
        return self.split.files

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(image, seg labels, depth) of one sample as stored (None for a task the dataset lacks)."""
        s = self.split
        return (np.array(s.images[index]), None if s.labels is None else np.array(s.labels[index]),
                None if s.depth is None else np.array(s.depth[index]))  # fmt: skip

    def load_sample(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(image H×W×3 uint8, {task: array as stored}) of one sample, for the loaded tasks."""
        s = self.split
        return np.array(s.images[index]), {t: np.array(s.targets[t][index]) for t in self.tasks}

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """``key`` is an index, or (epoch, index) as yielded by :class:`EpochSampler` (so that workers that
        outlive an epoch still augment with the right epoch's randomness)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, targets = self.load_sample(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            scale = float(rng.choice(SCALES))
            top, left, flip = rng.random(), rng.random(), rng.random() < 0.5
            if scale != 1.0:
                image, targets = scale_crop_targets(image, targets, scale, top, left, self.ctx)
            if flip:
                image = image[:, ::-1]
                targets = {t: get_task(t).flip(a) for t, a in targets.items()}
        if self.corrupt is not None:
            image = self.corrupt(np.ascontiguousarray(image), index)
        img = normalise(torch.from_numpy(np.ascontiguousarray(image)))
        return img, {t: get_task(t).target_tensor(a) for t, a in targets.items()}, index


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles indices with a generator seeded by (seed, epoch) and yields (epoch, index) pairs.

    With ``num_replicas`` > 1 each rank takes every ``num_replicas``-th index of the shared permutation
    (padded by wrapping so all ranks see the same count), as DistributedSampler does.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.start = 0
        self.per_rank = -(-length // num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; ``start`` skips that many of this rank's first indices
        (to resume in the middle of an epoch)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.num_replicas
        order = (order * (total // max(len(order), 1) + 1))[:total]
        for i in order[self.rank : total : self.num_replicas][self.start :]:
            yield (self.epoch, i)

    def __len__(self) -> int:
        return self.per_rank - self.start
