"""The dataset registry: every dataset ``crosstask train DATASET`` knows, what it holds and its paper defaults.

One entry per dataset; the command line, the training config, data preparation, label tables and evaluation ask
here instead of naming datasets. Imports nothing heavy (the command line reads it to draw ``--help``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crosstask_cli.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset: ``labels``: its label-table family (``cityscapes``: labelIds with 19 trainIds or 7 categories;
    ``nyu``: the 13 NYUv2 classes); ``classes``: the class counts it comes in; ``tasks``: the tasks its data can
    hold (a prepared copy lists the ones it has); ``layout``: how its raw files are laid out (``cityscapes``: the
    official raw or MTAN layout; ``nyu``: MTAN's arrays); ``size``: the paper's input size; ``defaults``: the
    paper's training settings (flat config keywords), ``data``: the default dataset folder; ``generated``: crosstask
    renders it where it is missing."""

    name: str
    title: str
    labels: str
    classes: tuple[int, ...]
    tasks: tuple[str, ...]
    layout: str
    size: tuple[int, int]
    data: str
    defaults: dict[str, Any] = field(default_factory=dict)
    generated: bool = False  # crosstask renders it (`prepare synthetic`) where it is missing

    @property
    def default_classes(self) -> int:
        return self.classes[0]

    @property
    def has_cityscapes_labels(self) -> bool:
        return self.labels == "cityscapes"


# The reference implementation's flag table (Cityscapes / NYUv2); synthetic follows Cityscapes with a schedule
# short enough for a CPU.
_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            name="cityscapes", title="Cityscapes", labels="cityscapes", classes=(7, 19), tasks=("seg", "depth"),
            layout="cityscapes", size=(128, 256), data="data/cityscapes",
            defaults=dict(epochs=250, batch_size=8, scheduler_step_size=80, alpha=0.01, gamma=0.01),
        ),
        DatasetInfo(
            name="nyu", title="NYUv2", labels="nyu", classes=(13,), tasks=("seg", "depth", "normal"), layout="nyu",
            size=(288, 384), data="data/nyu",
            defaults=dict(epochs=100, batch_size=6, scheduler_step_size=60, alpha=1e-4, gamma=1e-4),
        ),
        DatasetInfo(
            name="synthetic", title="synthetic street scenes", labels="cityscapes", classes=(7, 19),
            tasks=("seg", "depth", "normal"), layout="cityscapes", size=(128, 256), data="data/synthetic",
            defaults=dict(epochs=30, batch_size=8, scheduler_step_size=20, alpha=0.01, gamma=0.01), generated=True,
        ),
    )
}  # fmt: skip


def dataset_names() -> tuple[str, ...]:
    return tuple(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; ConfigError listing the datasets otherwise."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose from {', '.join(_DATASETS)}") from None


def paper_defaults(name: str) -> dict[str, Any]:
    """The paper's training settings of a dataset as flat config keywords (size, classes and data folder too)."""
    d = dataset_info(name)
    return {"height": d.size[0], "width": d.size[1], **d.defaults, "num_classes": d.default_classes, "data": d.data}


def known_or_default(name: str | None, fallback: str = "cityscapes") -> str:
    """``name`` when it is a registered dataset, else ``fallback`` (checkpoints of other datasets are treated like
    it when their data is prepared again)."""
    return name if name in _DATASETS else fallback


def dataset_for_layout(layout: str) -> DatasetInfo:
    """The dataset a raw layout of :func:`crosstask_cli.data.prepare.detect_layout` is read as when nothing else
    says (``nyu-mtan`` → nyu, Cityscapes layouts → cityscapes)."""
    family = layout.split("-")[0]
    return next(d for d in _DATASETS.values() if d.layout == family)
