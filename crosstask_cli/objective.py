"""The method's objective for any task set: direct predictions against their targets, transferred predictions
against the detached direct ones (or the targets), grouped into one loss per task for the weighting.

For tasks T and TaskTransferNets P (pairs source → target), with λ_t the consistency weight of task t:

    L_t                 the direct loss of t (its spec's, e.g. cross-entropy, ``--lp``, ``--normal-loss``)
    L_{s→t}             the loss of t's prediction transferred from s (t's spec: against the detached direct t
                        under ``xtsc``, against t's ground truth with t's direct loss under ``xtc``)
    task_s = (1 − λ_s)·L_s + λ_s · mean_t L_{s→t}     over the nets s feeds (0 if none)

A transferred loss belongs to the task whose prediction feeds the net (its gradient reaches that task's decoder),
as the original: with seg and depth, seg_task = (1 − α)·seg + α·tdepth and depth_task = (1 − γ)·depth + γ·tseg,
α = λ_seg and γ = λ_depth. With more targets per source the mean keeps λ's meaning (the share of the task loss
that is consistency) whatever the number of nets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from crosstask_cli.errors import ConfigError
from crosstask_cli.models.network import Predictions
from crosstask_cli.tasks import (
    TaskContext,
    all_specs,
    get_task,
    loss_names,
    ordered,
    parse_pairs,
    parse_tasks,
    task_loss_name,
    transfer_loss_name,
    transfer_order,
)

CONSISTENCY = ("xtsc", "xtc", "none")
DEFAULT_CONSISTENCY_WEIGHT = 0.01  # λ of a task without one given (the original's α = γ on Cityscapes)


@dataclass
class CrossTaskLoss:
    """All loss components of the method, for the tasks ``tasks`` and the TaskTransferNets ``pairs``.

    ``alpha`` weighs the transferred losses of the nets fed by segmentation in the segmentation task loss (λ_seg;
    with depth: the transferred-depth loss), ``gamma`` those fed by depth (λ_depth; with seg: the transferred
    segmentation loss); ``weights`` gives λ of any other task ({task: λ}, default 0.01). ``consistency``:
    ``xtsc`` (the method) trains the transferred predictions against the detached direct ones; ``xtc`` against
    the ground truth (each with its target task's direct loss, as the original); ``none`` has no transferred
    terms. ``lp``, ``tdep_loss``, ``tseg_loss`` and ``label_smoothing`` are the seg/depth options of the original;
    ``options`` holds the other tasks' ({"normal_loss": "cos", …}; see each task's ``options``).

    Called with predictions and the targets ({task: target}, or seg and depth targets as two arguments), it returns
    a dict of scalar tensors named by :func:`crosstask_cli.tasks.loss_names`: for seg and depth ``seg, depth,
    tseg, tdepth, seg_task, depth_task``. A task the predictions lack contributes 0.
    """

    num_classes: int
    alpha: float = 0.01
    gamma: float = 0.01
    lp: str = "l1"
    tdep_loss: str = "l1"
    tseg_loss: str = "ce"
    label_smoothing: float = 0.0
    ignore_index: int = 255
    consistency: str = "xtsc"
    tasks: tuple[str, ...] = ("seg", "depth")
    pairs: tuple[tuple[str, str], ...] | None = None  # None: every ordered pair of the tasks
    weights: Mapping[str, float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = ordered(parse_tasks(self.tasks, "tasks"))
        self.pairs = parse_pairs(self.pairs, self.tasks, "pairs") if self.pairs is not None else None
        if self.pairs is None:
            self.pairs = parse_pairs(None, self.tasks)
        if self.consistency not in CONSISTENCY:
            raise ConfigError(f"unknown consistency {self.consistency!r}; choose from {CONSISTENCY}")
        known = {o.name: o for t in self.tasks for o in get_task(t).options}
        legacy = {"lp": self.lp, "tdep_loss": self.tdep_loss, "tseg_loss": self.tseg_loss,
                  "label_smoothing": self.label_smoothing}  # fmt: skip
        unknown = set(self.options) - {o.name for spec in all_specs() for o in spec.options}
        if unknown:
            raise ConfigError(f"unknown task option(s) {', '.join(sorted(unknown))}")
        self._options = {**legacy, **dict(self.options)}
        for name, value in self._options.items():
            if name in known:
                known[name].check(value, name)  # the API's keyword (the CLI checks its flags in the config)
        lambdas = {"seg": self.alpha, "depth": self.gamma, **dict(self.weights or {})}
        for name in ("alpha", "gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for task, value in lambdas.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"the consistency weight of {task} must be in [0, 1], got {value}")
        self._lambdas = {t: lambdas.get(t, DEFAULT_CONSISTENCY_WEIGHT) for t in self.tasks}
        self._names = loss_names(self.tasks, self.pairs)

    @property
    def names(self) -> tuple[str, ...]:
        """The loss components this loss returns, in order."""
        return self._names

    def consistency_weight(self, task: str) -> float:
        return self._lambdas[task]

    def __call__(self, pred: Predictions, *targets: Any) -> dict[str, torch.Tensor]:
        if len(targets) == 1 and isinstance(targets[0], Mapping):
            target = dict(targets[0])
        elif len(targets) == 2:  # the original's call: (pred, seg_target, depth_target)
            target = {"seg": targets[0], "depth": targets[1]}
        else:
            raise TypeError("CrossTaskLoss(pred, targets) takes a {task: target} dict (or seg and depth targets)")
        ctx = TaskContext(num_classes=self.num_classes, ignore_index=self.ignore_index)
        ref = next(iter(pred), None)
        if ref is None:
            raise ValueError("CrossTaskLoss: the predictions hold no tensor")
        zero = ref.new_zeros((), dtype=torch.float32)
        opts = self._options
        out: dict[str, torch.Tensor] = {}
        for t in self.tasks:
            spec, p = get_task(t), pred.direct.get(t)
            out[t] = zero if p is None else spec.loss(p, target[t], opts.get(spec.direct_option), ctx)
        use_transfer = self.consistency != "none"
        for s, t in transfer_order(self.pairs):
            x = pred.transferred.get((s, t)) if use_transfer else None
            name = transfer_loss_name(s, t)
            if x is None:
                out[name] = zero
                continue
            direct = pred.direct.get(t)
            if direct is None and self.consistency == "xtsc":
                raise ValueError(f"{s}→{t}: xtsc trains against the direct {t} prediction, which is missing")
            out[name] = get_task(t).transferred_loss(x, direct, target[t], self.consistency, opts, ctx)
        for s in self.tasks:
            own = [out[transfer_loss_name(s, t)] for a, t in self.pairs if a == s]
            transferred = zero if not own else own[0] if len(own) == 1 else sum(own[1:], own[0]) / len(own)
            lam = self._lambdas[s]
            out[task_loss_name(s)] = (1 - lam) * out[s] + lam * transferred
        return {k: out[k] for k in self._names}
