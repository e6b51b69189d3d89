"""The task-weighting interface and its registry: how the task losses (seg_task, depth_task) become gradients.

Every method is an ``nn.Module`` (its learnable state goes into the optimizer and its buffers into
checkpoints) with the same calls per training step:

    weighting.attach(model)                               # once: lets gradient methods see the encoder features
    total = weighting.combine(task_losses, model)        # the scalar that is logged (and, usually, optimised)
    weighting.backward(total, task_losses, model, scaler) # gradients: one total.backward() by default
    optimizer.step(); weighting.after_step()              # after the optimizer step(s)
    weighting.epoch_end(mean_losses)                      # once per epoch (DWA)

Learnable weighting parameters go into the model's optimizer (``model_optimizer_parameters``) unless the method
trains them with an optimizer of its own (``configure_optimizers``: GradNorm, as the original method).

Under ``torchrun`` the trainer calls :meth:`TaskWeighting.use_process_group`; a method that needs loss values
or per-task gradients of the *global* batch reduces them through it, so that every process takes the same
decision as a single process with the whole batch would.

New methods are declared in :mod:`.catalog` (name, kind, reference, hyper-parameters) and register their class
with :func:`register_weighting`; :func:`weighting_class` imports the implementation module a method names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crosstask_cli.errors import ConfigError
from crosstask_cli.weighting.catalog import constructor_arguments, method_info

TASKS = ("seg_task", "depth_task")

_REGISTRY: dict[str, type[TaskWeighting]] = {}

AllReduceMean = Callable[[torch.Tensor], Any]


def register_weighting(name: str) -> Callable[[type[TaskWeighting]], type[TaskWeighting]]:
    """Register the implementation of the catalog's method ``name`` (its kind comes from the catalog)."""
    info = method_info(name)

    def deco(cls: type[TaskWeighting]) -> type[TaskWeighting]:
        _REGISTRY[name] = cls
        cls.name = name
        cls.kind = info.kind
        return cls

    return deco


def build_weighting(name: str, tasks: tuple[str, ...] = TASKS, **kwargs: Any) -> TaskWeighting:
    """Instantiate a registered weighting method by name (``fixed``, ``uncertainty``, ``famo``, ``upgrad``...)."""
    return weighting_class(name)(tasks, **kwargs)


def weighting_class(name: str) -> type[TaskWeighting]:
    info = method_info(name)  # ConfigError for an unknown name
    if name not in _REGISTRY:
        importlib.import_module(f"crosstask_cli.weighting.{info.module}")
    return _REGISTRY[name]


class TaskWeighting(nn.Module):
    """Base class. ``tasks`` names the entries of the loss dict that are combined.

    ``kind`` says what the method looks at: ``loss`` (loss values only, one backward pass) or ``gradient``
    (per-task gradients at the shared encoder; see :mod:`crosstask_cli.weighting.gradient_based`).
    """

    name = "base"
    kind = "loss"
    supports_distributed = True
    needs_features = False  # True: attach() keeps the encoder's output of the current training step
    # True: backward() assigns .grad itself (not through DDP's reducer) and averages it over the processes with
    # average_gradients_(); under DDP the trainer runs such a step in no_sync()
    sets_gradients = False

    def __init__(self, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self._all_reduce_mean_: AllReduceMean | None = None
        self._features: list[torch.Tensor] | None = None

    @classmethod
    def from_options(cls, tasks: tuple[str, ...], options: Any, seed: int = 0) -> TaskWeighting:
        """Build from the training options (any object with the hyper-parameters as attributes, e.g.
        ``TrainConfig.optim``): the catalog says which constructor argument each fills."""
        return cls(tasks, **constructor_arguments(cls.name, options, seed))

    # --- wiring ------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> Any:
        """Called once with the (unwrapped) model. Methods with ``needs_features`` get, in each
        gradient-tracking training forward, the encoder's outputs as the decoders read them: every output is
        passed on as an alias (``view_as``) that only the decoders consume, so a gradient with respect to it is
        the decoders' direct partial (not the encoder's own paths from a shallow feature to the deeper ones), and
        a hook on it can replace what the backward pass sends into the encoder. Returns the hook's handle
        (``handle.remove()`` detaches the method), or None when the method needs no features."""
        if not self.needs_features:
            return None
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise ConfigError(f"--weighting {self.name} needs a model with a shared encoder")

        def gate(module: nn.Module, inputs: Any, output: Any) -> Any:
            if not (module.training and torch.is_grad_enabled()):
                return None
            outputs = list(output) if isinstance(output, (list, tuple)) else [output]
            self._features = [f.view_as(f) for f in outputs]
            return self._features if isinstance(output, (list, tuple)) else self._features[0]

        return encoder.register_forward_hook(gate)

    def use_process_group(self, all_reduce_mean_: AllReduceMean | None) -> None:
        """``all_reduce_mean_`` averages a tensor in place across the training processes (None: one process)."""
        self._all_reduce_mean_ = all_reduce_mean_

    def global_mean_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged in place over every process (unchanged in a single process)."""
        if self._all_reduce_mean_ is not None:
            self._all_reduce_mean_(t)
        return t

    def average_gradients_(self, params: list[nn.Parameter]) -> None:
        """Average the parameters' .grad over the processes in one flat all-reduce, as DDP's reducer would (for
        methods that set gradients themselves, ``sets_gradients``); a no-op in a single process. A parameter
        without a gradient counts as zeros, so every process ends with the same gradients."""
        if self._all_reduce_mean_ is None:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = self.global_mean_(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def global_values(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task losses stacked (K), valued at their mean over every process's batch, differentiable as the
        local losses: under DDP the gradient of f(global values) averaged over processes is then exactly the
        gradient of f at the global batch, for any f that uses only loss values (FAMO, DB-MTL)."""
        local = torch.stack([losses[t].float() for t in self.tasks])
        values = self.global_mean_(local.detach().clone())
        return values + (local - local.detach())

    def distributed_sync_(self, all_reduce_mean_: AllReduceMean, first_step: bool) -> None:
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

    # --- per step ------------------------------------------------------------------------------------
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
        self._features = None
        (scaler.scale(total) if scaler is not None else total).backward()

    def after_step(self) -> None:
        """Called after the optimizer step (e.g. to renormalise weights)."""

    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        """Called with each task's mean training loss at the end of every epoch."""

    def weights(self) -> dict[str, float]:
        """The current effective weight of each task, for logging."""
        raise NotImplementedError


def stacked(losses: dict[str, torch.Tensor], tasks: tuple[str, ...]) -> torch.Tensor:
    return torch.stack([losses[t] for t in tasks])


def clip_shared_grad_norm_(model: nn.Module, max_norm: float, scale: float = 1.0) -> None:
    """Clip the shared encoder's gradient to ``max_norm`` (0: no clipping), as the Nash-MTL/FAMO code bases do
    for their methods. ``scale``: an fp16 GradScaler's current scale, by which the stored gradients are
    multiplied, so the clipping acts on the true gradient."""
    if max_norm > 0:
        shared = model.shared_parameters() if hasattr(model, "shared_parameters") else list(model.parameters())
        torch.nn.utils.clip_grad_norm_(shared, max_norm * scale)
