"""crosstask: multi-task dense prediction (segmentation, depth, surface normals) with cross-task consistency.

The Python API (``import crosstask_cli as ct``) is what the ``crosstask`` command runs. Heavy modules
(torch) are imported on first attribute access so that ``crosstask --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"  # pyproject.toml holds the same; 0.2.0: decoders with align_corners=True (0.1.0 runs cannot resume), N tasks, architectures

_EXPORTS = {
    "build_model": "crosstask_cli.models.network",
    "load_reference_weights": "crosstask_cli.models.reference",
    "CrossTaskNet": "crosstask_cli.models.network",
    "ModelConfig": "crosstask_cli.models.network",
    "Predictions": "crosstask_cli.models.network",
    "TaskTransferNet": "crosstask_cli.models.transfer_net",
    "CrossTaskLoss": "crosstask_cli.objective",
    "get_task": "crosstask_cli.tasks",
    "task_names": "crosstask_cli.tasks",
    "TaskSpec": "crosstask_cli.tasks",
    "TaskContext": "crosstask_cli.tasks",
    "build_weighting": "crosstask_cli.weighting",
    "register_weighting": "crosstask_cli.weighting",
    "TaskWeighting": "crosstask_cli.weighting",
    "FixedWeighting": "crosstask_cli.weighting",
    "UncertaintyWeighting": "crosstask_cli.weighting",
    "GradNormWeighting": "crosstask_cli.weighting",
    "ConfusionMatrix": "crosstask_cli.metrics",
    "DepthMetrics": "crosstask_cli.metrics",
    "OriginalProtocolMetrics": "crosstask_cli.metrics",
    "ConsistencyMetrics": "crosstask_cli.metrics",
    "PreparedDataset": "crosstask_cli.data.dataset",
    "TrainConfig": "crosstask_cli.engine.config",
    "train": "crosstask_cli.engine.trainer",
    "evaluate": "crosstask_cli.engine.evaluator",
    "load_checkpoint": "crosstask_cli.engine.checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crosstask_cli' has no attribute {name!r}")
