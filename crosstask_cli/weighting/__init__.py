"""Task weighting: how the task losses become the gradients of a training step (see :mod:`.base`).

Importing the package registers every method: loss-based ones in :mod:`.loss_based`, gradient-based ones in
:mod:`.gradient_based`.
"""

# Loss-based methods register first, so listings start with fixed, the default.
from crosstask_cli.weighting.base import (  # noqa: I001
    TASKS,
    TaskWeighting,
    build_weighting,
    register_weighting,
    weighting_class,
    weighting_names,
)
from crosstask_cli.weighting.loss_based import (
    DynamicWeightAverage,
    FAMOWeighting,
    FixedWeighting,
    RandomLossWeighting,
    UncertaintyWeighting,
)
from crosstask_cli.weighting.gradient_based import (
    GRAD_SPACES,
    GRADNORM_PARAMS,
    AlignedMTLWeighting,
    CAGradWeighting,
    DualBalancingWeighting,
    FairGradWeighting,
    GradNormWeighting,
    GramianWeighting,
    IMTLWeighting,
    MGDAWeighting,
    NashMTLWeighting,
    PCGradWeighting,
    UPGradWeighting,
    task_gramian,
)

__all__ = [
    "TASKS", "TaskWeighting", "build_weighting", "register_weighting", "weighting_class", "weighting_names",
    "DynamicWeightAverage", "FAMOWeighting", "FixedWeighting", "RandomLossWeighting", "UncertaintyWeighting",
    "GRAD_SPACES", "GRADNORM_PARAMS", "AlignedMTLWeighting", "CAGradWeighting", "DualBalancingWeighting",
    "FairGradWeighting", "GradNormWeighting", "GramianWeighting", "IMTLWeighting", "MGDAWeighting",
    "NashMTLWeighting", "PCGradWeighting", "UPGradWeighting", "task_gramian",
]  # fmt: skip
