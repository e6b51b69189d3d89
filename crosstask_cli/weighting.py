"""Task weighting: how the two task losses (seg_task, depth_task) become one scalar to backpropagate.

Every method is an ``nn.Module`` (its learnable state goes into the optimizer and its buffers into
checkpoints) with the same calls per training step:

    total = weighting.combine(task_losses, model)        # the scalar that is optimised (and logged)
    weighting.backward(total, task_losses, model, scaler) # gradients: one total.backward() by default
    optimizer.step(); weighting.after_step()              # after the optimizer step(s)
    weighting.epoch_end(mean_task_losses)                 # once per epoch (DWA)

Learnable weighting parameters go into the model's optimizer (``model_optimizer_parameters``) unless the method
trains them with an optimizer of its own (``configure_optimizers``: GradNorm, as the original method).

All methods but PCGrad (which needs one gradient per task by definition) run exactly one backward pass.

New methods register with :func:`register_weighting`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crosstask_cli.errors import ConfigError

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
    return weighting_class(name)(tasks, **kwargs)


def weighting_class(name: str) -> type[TaskWeighting]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown weighting {name!r}; choose from {weighting_names()}")
    return _REGISTRY[name]


class TaskWeighting(nn.Module):
    """Base class. ``tasks`` names the entries of the loss dict that are combined."""

    name = "base"
    supports_distributed = True  # False where gradients are set outside DDP's reducer (PCGrad)

    def __init__(self, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    @classmethod
    def from_options(cls, tasks: tuple[str, ...], options: Any, seed: int = 0) -> TaskWeighting:
        """Build from the training options (any object with the ``--weighting`` hyper-parameters as attributes,
        e.g. ``TrainConfig.optim``); methods with hyper-parameters override this."""
        return cls(tasks)

    def distributed_sync_(self, all_reduce_mean_: Callable[[torch.Tensor], None], first_step: bool) -> None:
        """Make every process hold the same state after the backward pass: average the gradients of the method's
        parameters and, after the first step, the floating-point buffers that step initialised from its own batch
        (GradNorm's L(0)). ``all_reduce_mean_`` averages a tensor in place across processes."""
        for p in self.parameters():
            if p.grad is not None:
                all_reduce_mean_(p.grad)
        if first_step:
            for b in self.buffers():
                if b.is_floating_point():
                    all_reduce_mean_(b)

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        raise NotImplementedError

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        """The method's learnable parameters that the model's optimizer trains (with its schedule)."""
        return list(self.parameters())

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """Optimizers of the method's own (stepped with the model's, never scheduled); ``lr`` is the model's
        initial learning rate. Their state belongs in checkpoints."""
        return []

    def backward(self, total: torch.Tensor, losses: dict[str, torch.Tensor], model: nn.Module, scaler=None) -> None:
        """Fill the parameters' .grad for this step: one backward pass of ``total``."""
        (scaler.scale(total) if scaler is not None else total).backward()

    def after_step(self) -> None:
        """Called after the optimizer step (e.g. to renormalise weights)."""

    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        """Called with each task's mean training loss at the end of every epoch."""

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


GRADNORM_PARAMS = ("conv", "block")


@register_weighting("gradnorm")
class GradNormWeighting(TaskWeighting):
    """Chen et al. 2018, GradNorm (ICML), with the original cross-task method's settings.

    Learnable task weights w_t (renormalised after each step to sum to the task count, kept positive).
    Their gradient is that of L_grad = Σ_t |w_t·g_t − mean(w·g)·r_t^α|, where g_t is the norm of ∇L_t (the
    unweighted task loss) at the shared parameters and r_t the task's relative inverse training rate
    (L_t/L_t(0) over its mean, L(0) from the first batch). The target term is a constant, so
    ∂L_grad/∂w_t = sign(·)·g_t, set directly on w.grad: the g_t come from ``autograd.grad`` on the shared
    parameters only, leaving one ``backward()``.

    Defaults as the original: asymmetry ``alpha`` = 0.16; ``params="conv"`` measures g_t at the encoder's last
    convolution weight (``layer4[-1].conv2.weight``), ``"block"`` at every parameter of the last layer4 block;
    the weights are trained by their own Adam (betas 0.9/0.999, the model's initial lr, no schedule).
    """

    def __init__(
        self, tasks: tuple[str, ...] = TASKS, alpha: float = 0.16, params: str = "conv", min_weight: float = 1e-3
    ) -> None:
        super().__init__(tasks)
        if params not in GRADNORM_PARAMS:
            raise ConfigError(f"GradNorm params must be one of {GRADNORM_PARAMS}, got {params!r}")
        self.alpha = float(alpha)
        self.params = params
        self.min_weight = float(min_weight)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_options(cls, tasks: tuple[str, ...], options: Any, seed: int = 0) -> GradNormWeighting:
        return cls(tasks, alpha=options.gradnorm_alpha, params=options.gradnorm_params)

    def _shared_params(self, model: nn.Module) -> list[nn.Parameter]:
        src = model.encoder if hasattr(model, "encoder") else model
        if self.params == "conv":
            return [src.last_shared_weight]
        return [p for p in src.last_shared_layer.parameters() if p.requires_grad]

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        return []

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam([self.task_weights], lr=lr, betas=(0.9, 0.999))]

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        return (self.task_weights.detach() * stacked).sum()

    def backward(self, total: torch.Tensor, losses: dict[str, torch.Tensor], model: nn.Module, scaler=None) -> None:
        """Set the weights' gradient from the task gradient norms, then one backward pass of ``total``.

        With an fp16 GradScaler the norms are taken of the scaled losses' gradients (so that small fp16 gradients
        do not underflow) and divided by the scale; the weights' gradient is stored scaled like every other, so
        that ``scaler.step`` unscales it and skips the step when any gradient overflowed.
        """
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        w = self.task_weights
        stacked = torch.stack([losses[t] for t in self.tasks])
        if self.training and stacked.requires_grad:
            params = self._shared_params(model)
            norms = []
            for loss in stacked:
                grads = torch.autograd.grad(loss * scale, params, retain_graph=True, allow_unused=True)
                sq = sum((g.float().square().sum() for g in grads if g is not None), torch.zeros(()))
                norms.append(sq.sqrt() / scale)
            g = torch.stack(norms).to(w.device).detach()
            current = stacked.detach().float()
            if not bool(self.initialised):
                self.initial_losses.copy_(current.clamp(min=1e-12))
                self.initialised.fill_(True)
            ratio = current / self.initial_losses
            rel_rate = ratio / ratio.mean().clamp(min=1e-12)
            wg = w.detach() * g
            target = wg.mean() * rel_rate.pow(self.alpha)
            w.grad = (torch.sign(wg - target) * g * scale).to(w.dtype)
        super().backward(total, losses, model, scaler)

    @torch.no_grad()
    def after_step(self) -> None:
        w = self.task_weights
        w.clamp_(min=self.min_weight)
        w.mul_(len(self.tasks) / w.sum())

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.detach().tolist(), strict=True))


@register_weighting("dwa")
class DynamicWeightAverage(TaskWeighting):
    """Liu et al. 2019 (MTAN), Dynamic Weight Average: w_k = K·exp(r_k/T) / Σ_i exp(r_i/T) with
    r_k = L_k(t−1) / L_k(t−2), the ratio of the task's mean training losses over the last two epochs; weights
    are 1 for the first two epochs. ``temperature`` T (2 in the paper) softens the weights."""

    def __init__(self, tasks: tuple[str, ...] = TASKS, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ConfigError(f"DWA temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("history", torch.zeros(2, len(self.tasks)))  # losses of epochs t−2, t−1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_weights", torch.ones(len(self.tasks)))

    @classmethod
    def from_options(cls, tasks: tuple[str, ...], options: Any, seed: int = 0) -> DynamicWeightAverage:
        return cls(tasks, temperature=options.dwa_temperature)

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        return (self.task_weights.to(stacked) * stacked).sum()

    @torch.no_grad()
    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        current = torch.tensor([float(mean_losses[t]) for t in self.tasks], dtype=self.history.dtype)
        self.history[0] = self.history[1].clone()
        self.history[1] = current.to(self.history.device)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            ratio = self.history[1] / self.history[0].clamp(min=1e-12)
            self.task_weights.copy_(len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.tolist(), strict=True))


def pcgrad_project(grads: list[torch.Tensor], order_seed: int = 0) -> list[torch.Tensor]:
    """Yu et al. 2020 (PCGrad): for each task gradient g_i and each other task j in random order, remove the
    component along g_j when they conflict (g_i·g_j < 0): g_i ← g_i − (g_i·g_j)/‖g_j‖²·g_j. Non-conflicting
    gradients are left unchanged. Inputs are flat gradients; returns the projected ones (sum them)."""
    gen = torch.Generator().manual_seed(order_seed)
    out = []
    for i, g in enumerate(grads):
        g = g.clone()
        others = [j for j in torch.randperm(len(grads), generator=gen).tolist() if j != i]
        for j in others:
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g -= dot / grads[j].dot(grads[j]).clamp(min=1e-20) * grads[j]
        out.append(g)
    return out


@register_weighting("pcgrad")
class PCGradWeighting(TaskWeighting):
    """Projecting conflicting gradients (Yu et al. 2020) on the shared encoder; other parameters get the plain
    sum of their task gradients.

    Cost: each task loss is backpropagated separately (``autograd.grad``): parts only one task reaches are
    traversed once as usual, the shared encoder once per task; plus one flat copy of the encoder gradient per
    task (ResNet-34: 21.3 M parameters → 85 MB each). Measured: +5 % step time at ResNet-34, 128×256, batch 8
    on CPU. Not supported with an fp16 GradScaler nor under DDP (gradients are set outside DDP's reducer).
    """

    supports_distributed = False

    def __init__(self, tasks: tuple[str, ...] = TASKS, seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(seed)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_options(cls, tasks: tuple[str, ...], options: Any, seed: int = 0) -> PCGradWeighting:
        return cls(tasks, seed=seed)

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        return sum(losses[t] for t in self.tasks)

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}  # PCGrad changes directions, not weights

    def backward(self, total: torch.Tensor, losses: dict[str, torch.Tensor], model: nn.Module, scaler=None) -> None:
        if scaler is not None and scaler.is_enabled():
            raise ConfigError("pcgrad does not support fp16 loss scaling; use --amp bf16 or --amp off")
        params = [p for p in model.parameters() if p.requires_grad]
        shared = {id(p) for p in model.shared_parameters()}
        per_task = []
        for i, t in enumerate(self.tasks):
            per_task.append(
                torch.autograd.grad(losses[t], params, retain_graph=i < len(self.tasks) - 1, allow_unused=True)
            )
        shared_idx = [k for k, p in enumerate(params) if id(p) in shared]
        shared_set = set(shared_idx)

        def flat(grads) -> torch.Tensor:
            return torch.cat(
                [(grads[k] if grads[k] is not None else torch.zeros_like(params[k])).flatten() for k in shared_idx]
            )

        projected = pcgrad_project([flat(g) for g in per_task], order_seed=self.seed * 1_000_003 + int(self.steps))
        combined = torch.stack(projected).sum(0)
        offset = 0
        for k, p in enumerate(params):
            if k in shared_set:
                n = p.numel()
                p.grad = combined[offset : offset + n].view_as(p).clone()
                offset += n
            else:
                parts = [g[k] for g in per_task if g[k] is not None]
                p.grad = torch.stack(parts).sum(0) if parts else None
        self.steps += 1
