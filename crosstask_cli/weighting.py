"""Task weighting: how the two task losses (seg_task, depth_task) become one scalar to backpropagate.

Every method is an ``nn.Module`` (its learnable state goes into the optimizer and its buffers into
checkpoints) with the same three calls per training step, so that a step has exactly one ``backward()``:

    total = weighting.combine(task_losses, model)    # before backward
    total.backward()
    optimizer.step(); weighting.after_step()          # after the optimizer step

New methods register with :func:`register_weighting`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

TASKS = ("seg_task", "depth_task")

_REGISTRY: dict[str, type[TaskWeighting]] = {}


def register_weighting(name: str) -> Callable[[type[TaskWeighting]], type[TaskWeighting]]:
    def deco(cls: type[TaskWeighting]) -> type[TaskWeighting]:
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def weighting_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_weighting(name: str, tasks: tuple[str, ...] = TASKS, **kwargs: float) -> TaskWeighting:
    """Instantiate a registered weighting method by name (``fixed``, ``uncertainty``, ``gradnorm``...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown weighting {name!r}; choose from {weighting_names()}")
    return _REGISTRY[name](tasks, **kwargs)


class TaskWeighting(nn.Module):
    """Base class. ``tasks`` names the entries of the loss dict that are combined."""

    name = "base"

    def __init__(self, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after the optimizer step (e.g. to renormalise weights)."""

    def weights(self) -> dict[str, float]:
        """The current effective weight of each task, for logging."""
        raise NotImplementedError


@register_weighting("fixed")
class FixedWeighting(TaskWeighting):
    """Plain sum of the task losses (each weight 1)."""

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        return sum(losses[t] for t in self.tasks)

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}


@register_weighting("uncertainty")
class UncertaintyWeighting(TaskWeighting):
    """Kendall et al. 2018: Σ ½·exp(−s_t)·L_t + ½·s_t with learnable log-variances s_t (init 0)."""

    def __init__(self, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        return (0.5 * torch.exp(-self.log_vars) * stacked + 0.5 * self.log_vars).sum()

    def weights(self) -> dict[str, float]:
        w = (0.5 * torch.exp(-self.log_vars.detach())).tolist()
        return dict(zip(self.tasks, w, strict=True))


@register_weighting("gradnorm")
class GradNormWeighting(TaskWeighting):
    """Chen et al. 2018, GradNorm.

    Learnable task weights w_t (renormalised after each step to sum to the task count, kept positive).
    Their gradient is that of L_grad = Σ_t |w_t·g_t − mean(w·g)·r_t^α|, where g_t is the norm of ∇L_t at
    the parameters of the model's last shared encoder layer and r_t the task's relative inverse training
    rate (L_t/L_t(0) over its mean). The target term is a constant, so ∂L_grad/∂w_t = sign(·)·g_t, set
    directly on w.grad: the g_t come from ``autograd.grad`` on that layer only, leaving one ``backward()``.
    """

    def __init__(self, tasks: tuple[str, ...] = TASKS, alpha: float = 1.5, min_weight: float = 1e-3) -> None:
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.min_weight = float(min_weight)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _shared_params(self, model: nn.Module) -> list[nn.Parameter]:
        layer = model.encoder.last_shared_layer if hasattr(model, "encoder") else model.last_shared_layer
        return [p for p in layer.parameters() if p.requires_grad]

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        w = self.task_weights
        if self.training and model is not None and stacked.requires_grad:
            params = self._shared_params(model)
            norms = []
            for loss in stacked:
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                sq = sum((g.float().square().sum() for g in grads if g is not None), torch.zeros(()))
                norms.append(sq.sqrt())
            g = torch.stack(norms).to(w.device).detach()
            current = stacked.detach().float()
            if not bool(self.initialised):
                self.initial_losses.copy_(current.clamp(min=1e-12))
                self.initialised.fill_(True)
            ratio = current / self.initial_losses
            rel_rate = ratio / ratio.mean().clamp(min=1e-12)
            wg = w.detach() * g
            target = wg.mean() * rel_rate.pow(self.alpha)
            w.grad = (torch.sign(wg - target) * g).to(w.dtype)
        return (w.detach() * stacked).sum()

    @torch.no_grad()
    def after_step(self) -> None:
        w = self.task_weights
        w.clamp_(min=self.min_weight)
        w.mul_(len(self.tasks) / w.sum())

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.detach().tolist(), strict=True))
