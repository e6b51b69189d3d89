"""Loss-based task weighting: methods that look at the task loss values only (one backward pass per step).

fixed, uncertainty (Kendall 2018), dwa (Liu 2019), rlw (Lin 2022) and famo (Liu 2023).
"""

from __future__ import annotations

import torch
from torch import nn

from crosstask_cli.errors import ConfigError
from crosstask_cli.weighting.base import TASKS, TaskWeighting, clip_shared_grad_norm_, register_weighting


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


@register_weighting("rlw")
class RandomLossWeighting(TaskWeighting):
    """Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning"
    (TMLR), RLW: each step the task losses are weighted by λ = softmax(ν), ν ~ N(0, I) (the paper's normal
    distribution; the weights sum to 1). No hyper-parameters.

    The draw of step k comes from a generator seeded with (seed, k), so every process of a ``torchrun`` job uses
    the same weights, resumed runs continue the sequence and the global random state is left alone. (TorchJD's
    ``Random`` is the same formula drawn from the global generator, which differs between processes under DDP
    and would shift the training's own random stream; hence this one.)
    """

    def __init__(self, tasks: tuple[str, ...] = TASKS, seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(seed)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("last", torch.full((len(self.tasks),), 1.0 / len(self.tasks)))

    def draw(self, step: int) -> torch.Tensor:
        """The weights of training step ``step`` (K, summing to 1)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        return torch.softmax(torch.randn(len(self.tasks), generator=gen, dtype=torch.float64), 0).float()

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        values = torch.stack([losses[t] for t in self.tasks])
        if not (self.training and values.requires_grad):
            return values.sum()
        w = self.draw(int(self.steps)).to(values.device)
        self.last.copy_(w)
        return (w.to(values.dtype) * values).sum()

    def after_step(self) -> None:
        self.steps += 1

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.last.tolist(), strict=True))


@register_weighting("famo")
class FAMOWeighting(TaskWeighting):
    """Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS), through TorchJD's
    ``torchjd.scalarization.FAMO``: the model minimises c·Σ z_i·log(L_i + ε), z = softmax(ξ),
    c = (Σ z_i / (L_i + ε))⁻¹ held constant, and the logits ξ take an Adam step towards the tasks whose
    log-loss decreased least.

    Hyper-parameters (defaults of the official experiment scripts): ``lr`` = 0.025 (Adam on ξ), ``weight_decay``
    γ = 0.01, ``max_norm`` = 1.0 (the shared encoder's gradient is clipped to this norm, as the official code
    does; 0 disables); lower loss bounds 0.

    Difference from the official code: it recomputes the losses on the same batch after each step (a second
    forward pass) to update ξ; here ξ is updated at the start of the next step from that step's losses, so
    FAMO costs no extra forward pass (the update sees the next batch instead of the same one). Under DDP the
    losses are those of the global batch (:meth:`global_values`), so every process learns the same ξ. State (ξ,
    the previous losses, the Adam state of ξ) is checkpointed.
    """

    def __init__(
        self, tasks: tuple[str, ...] = TASKS, lr: float = 0.025, weight_decay: float = 0.01, max_norm: float = 1.0
    ) -> None:
        super().__init__(tasks)
        from torchjd.scalarization import FAMO

        if lr < 0 or weight_decay < 0:
            raise ConfigError(f"FAMO needs lr ≥ 0 and weight decay ≥ 0, got {lr} and {weight_decay}")
        self.famo = FAMO(len(self.tasks), lr=lr, weight_decay=weight_decay)
        self.max_norm = float(max_norm)

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        return []  # ξ is stepped by FAMO's own Adam, from loss changes, never by the model's optimizer

    def distributed_sync_(self, all_reduce_mean_, first_step: bool) -> None:
        pass  # ξ is updated from the global losses, identically on every process

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        values = self.global_values(losses)
        if not (self.training and values.requires_grad) or not bool(torch.isfinite(values).all()):
            return values.sum()  # evaluation, or a step the trainer will skip: FAMO's state is left alone
        if self.famo._prev_losses is not None:  # the loss change over the previous step moves ξ
            self.famo.update(values.detach())
        return self.famo(values)

    def backward(self, total: torch.Tensor, losses: dict[str, torch.Tensor], model: nn.Module, scaler=None) -> None:
        super().backward(total, losses, model, scaler)
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        clip_shared_grad_norm_(model, self.max_norm, scale)

    def weights(self) -> dict[str, float]:
        z = torch.softmax(self.famo._w.detach().flatten(), 0)
        return dict(zip(self.tasks, z.tolist(), strict=True))

    def get_extra_state(self) -> dict:
        opt = self.famo._optimizer
        prev = self.famo._prev_losses
        return {
            "prev_losses": None if prev is None else prev.detach().cpu(),
            "optimizer": None if opt is None else opt.state_dict(),
        }

    def set_extra_state(self, state: dict) -> None:
        prev = state.get("prev_losses")
        self.famo._prev_losses = None if prev is None else prev.to(self.famo._w.device)
        self.famo._optimizer = None
        if state.get("optimizer") is not None:
            opt = torch.optim.Adam([self.famo._w], lr=self.famo.lr, weight_decay=self.famo.weight_decay)
            opt.load_state_dict(state["optimizer"])
            self.famo._optimizer = opt
