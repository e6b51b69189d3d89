"""Task weighting: how the task losses become the gradients of a training step (see :mod:`.base`).

:mod:`.catalog` declares every method (name, kind, reference, hyper-parameters) without importing torch; the
command line reads it for its flags. The implementations (:mod:`.loss_based`, :mod:`.gradient_based`) are
imported on first use of anything else here.
"""

from __future__ import annotations

import importlib
from typing import Any

from crosstask_cli.weighting.catalog import (
    HYPERPARAMETERS,
    METHODS,
    HyperParameter,
    Method,
    method_info,
    weighting_help,
    weighting_names,
)

_MODULES = {
    "base": ("TASKS", "TaskWeighting", "build_weighting", "register_weighting", "weighting_class"),
    "loss_based": ("DynamicWeightAverage", "FAMOWeighting", "FixedWeighting", "RandomLossWeighting",
                   "UncertaintyWeighting"),
    "gradient_based": ("GRAD_SPACES", "GRADNORM_PARAMS", "AlignedMTLWeighting", "CAGradWeighting",
                       "DualBalancingWeighting", "FairGradWeighting", "GradNormWeighting", "GramianWeighting",
                       "IMTLWeighting", "MGDAWeighting", "NashMTLWeighting", "PCGradWeighting", "UPGradWeighting",
                       "task_gramian"),
}  # fmt: skip
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = ["HYPERPARAMETERS", "METHODS", "HyperParameter", "Method", "method_info", "weighting_help",
           "weighting_names", *_WHERE]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"crosstask_cli.weighting.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'crosstask_cli.weighting' has no attribute {name!r}")
