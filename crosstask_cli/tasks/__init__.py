"""The task registry: every task crosstask can train, keyed by name; everything task-specific is asked of its spec.

    import crosstask_cli as ct
    spec = ct.get_task("normal")
    loss = spec.loss(pred, target)                 # B×3×H×W unit normals against the ground truth
    m = spec.metrics("standard"); m.update(pred, target); m.compute()

Registration order is the canonical order of tasks (modules, files, tables, keys). Names of what concerns a
pair of tasks (the prediction of ``target`` transferred from ``source``) are made here, once: the two pairs of
the original method keep its names (``tseg``, ``tdepth``, ``seg_agreement``, ``depth_gap``), every other pair's
names end in ``_from_<source>``.

Adding a task: a module beside ``seg``/``depth``/``normal`` with a :class:`~crosstask_cli.tasks.base.TaskSpec`
subclass, and its line in :data:`_SPECS` (docs/architecture.md, "Where to add").
"""

from __future__ import annotations

from crosstask_cli.errors import ConfigError
from crosstask_cli.tasks.base import TaskContext, TaskMetrics, TaskSpec
from crosstask_cli.tasks.depth import DepthTask
from crosstask_cli.tasks.normal import NormalTask
from crosstask_cli.tasks.seg import SegmentationTask

_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (SegmentationTask(), DepthTask(), NormalTask())}

LEGACY_TASKS = ("seg", "depth")  # the original method's pair: the default, and what datasets without a list hold
# The original method's names of its two transfers (source, target).
_LEGACY_PAIR_NAMES = {("depth", "seg"): "tseg", ("seg", "depth"): "tdepth"}

Pair = tuple[str, str]

__all__ = [
    "TaskContext", "TaskMetrics", "TaskSpec", "LEGACY_TASKS", "get_task", "task_names", "all_specs",
    "ordered", "parse_tasks", "default_pairs", "parse_pairs", "pair_suffix", "transfer_file_tag", "transfer_loss_name",
    "task_loss_name", "transfer_order", "loss_names", "agreement_name", "is_transfer_loss",
]  # fmt: skip


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; ConfigError listing the known tasks otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(_SPECS)}") from None


def task_names() -> tuple[str, ...]:
    return tuple(_SPECS)


def all_specs() -> tuple[TaskSpec, ...]:
    return tuple(_SPECS.values())


def ordered(tasks) -> tuple[str, ...]:
    """``tasks`` in the registry's order (unknown names are a ConfigError)."""
    for t in tasks:
        get_task(t)
    return tuple(t for t in _SPECS if t in set(tasks))


def parse_tasks(value, flag: str = "--tasks") -> tuple[str, ...]:
    """``seg,depth,normal`` (or a sequence) → the tuple as given, checked: known names, no repeats, not empty."""
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else [str(t).strip() for t in value]
    items = [t for t in items if t]
    if not items:
        raise ConfigError(f"{flag} needs at least one task of {', '.join(_SPECS)}")
    unknown = [t for t in items if t not in _SPECS]
    if unknown:
        raise ConfigError(f"{flag}: unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(_SPECS)}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{flag} names a task twice: {','.join(items)}")
    return tuple(items)


def default_pairs(tasks) -> tuple[Pair, ...]:
    """Every ordered pair (source, target) of different tasks, sources in registry order: for seg and depth the
    original method's two TaskTransferNets, seg→depth then depth→seg."""
    ts = ordered(tasks)
    return tuple((s, t) for s in ts for t in ts if s != t)


def parse_pairs(value, tasks, flag: str = "--transfer-pairs") -> tuple[Pair, ...]:
    """``seg:depth,depth:seg`` (or pairs) → ordered pairs, checked against ``tasks``; empty → :func:`default_pairs`.
    The result is in the canonical order (by source, then target, in registry order)."""
    if value is None or (not isinstance(value, str) and len(value) == 0) or value == "":
        return default_pairs(tasks)
    items = value.split(",") if isinstance(value, str) else list(value)
    pairs = []
    for item in items:
        if isinstance(item, str):
            parts = [p.strip() for p in item.split(":")]
        else:
            parts = [str(p).strip() for p in item]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{flag}: {item!r} is not SOURCE:TARGET (e.g. seg:depth)")
        s, t = parts
        for name in (s, t):
            if name not in tasks:
                raise ConfigError(f"{flag}: {s}:{t} names {name}, which is not trained (tasks: {','.join(tasks)})")
        if s == t:
            raise ConfigError(f"{flag}: {s}:{t} transfers a task to itself")
        if (s, t) in pairs:
            raise ConfigError(f"{flag} names {s}:{t} twice")
        pairs.append((s, t))
    order = {t: i for i, t in enumerate(_SPECS)}
    return tuple(sorted(pairs, key=lambda p: (order[p[0]], order[p[1]])))


def pair_suffix(source: str, target: str) -> str:
    """'' for the original method's two pairs, ``_from_<source>`` for every other."""
    return "" if (source, target) in _LEGACY_PAIR_NAMES else f"_from_{source}"


def transfer_file_tag(source: str, target: str) -> str:
    """The tag of a transferred prediction's files: ``_transfer`` for the original's two pairs, else
    ``_transfer_from_<source>`` (``STEM_normal_transfer_from_seg.npy``)."""
    return "_transfer" + pair_suffix(source, target)


def transfer_loss_name(source: str, target: str) -> str:
    """The loss component of the prediction of ``target`` transferred from ``source``: ``tdepth`` (seg→depth),
    ``tseg`` (depth→seg), ``tnormal_from_seg``, …"""
    return _LEGACY_PAIR_NAMES.get((source, target), f"t{target}_from_{source}")


def is_transfer_loss(name: str) -> bool:
    """Whether a loss component is the loss of a transferred prediction (of any pair of registered tasks)."""
    return any(transfer_loss_name(s, t) == name for s, t in default_pairs(_SPECS))


def task_loss_name(task: str) -> str:
    """The task loss the weighting balances: ``seg_task``, ``depth_task``, …"""
    return f"{task}_task"


def transfer_order(pairs) -> tuple[Pair, ...]:
    """Pairs by target, then source (registry order): the order loss components and reports list them in."""
    order = {t: i for i, t in enumerate(_SPECS)}
    return tuple(sorted(pairs, key=lambda p: (order[p[1]], order[p[0]])))


def loss_names(tasks, pairs) -> tuple[str, ...]:
    """Every loss component of a training with ``tasks`` and TaskTransferNets for ``pairs``, in logging order:
    the direct losses, the transferred ones (by target), the task losses. For seg and depth:
    seg, depth, tseg, tdepth, seg_task, depth_task."""
    ts = ordered(tasks)
    return (*ts, *(transfer_loss_name(s, t) for s, t in transfer_order(pairs)), *(task_loss_name(t) for t in ts))


def agreement_name(source: str, target: str) -> str:
    """The direct-vs-transferred agreement of a pair in ``consistency``: ``seg_agreement``, ``depth_gap``,
    ``normal_gap_from_seg``, …"""
    return get_task(target).agreement + pair_suffix(source, target)
