"""Gradient-based task weighting: methods that look at the per-task gradients at the shared encoder.

GradNorm (Chen 2018) measures per-task gradient norms at one encoder layer. The others (MGDA, PCGrad, CAGrad,
IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, FairGrad, DB-MTL) derive from the K×K Gramian G = J·Jᵀ of the per-task
gradients J (one row per task) a weight per task, and the update is wᵀJ: the gradient of Σ_t w_t·L_t with the
weights held constant at the shared encoder. :class:`GramianWeighting` computes that in three stages:

1. One ``autograd.grad`` per task loss, with respect to the *shared representation* (the encoder's five outputs
   as the decoders read them; ``grad_space="features"``, the default; MGDA-UB, Sener & Koltun 2018, takes
   gradients at the representation too) and to the task-specific parameters at once; with
   ``grad_space="encoder"`` also to the encoder's parameters (exact, but every task is backpropagated through the
   encoder). Each task loss reaches only its own decoder and TaskTransferNet (the other task's predictions enter
   it detached), so this traverses every task-specific part once, as a plain backward pass would.
2. G from the shared gradients, in float64. Under an fp16 GradScaler the task losses are scaled before
   differentiation (so small gradients do not underflow) and G is divided by the squared scale: the weights see
   the true gradients. Under DDP: feature-space G is the sum of every process's G over the square of the process
   count (each process's features affect only its own batch's losses), encoder-space gradients are averaged over
   processes before G is formed; either way every process computes the G of the global batch and so the same
   weights.
3. The gradients: every task-specific parameter gets its own task's gradient (as TorchJD's ``mtl_backward``;
   DB-MTL scales it by 1/L_t); the encoder gets Σ_t w_t·∇L_t, by one backward pass from the features with
   Σ_t w_t·∂L_t/∂features (feature space) or directly from stage 1 (encoder space). The forward pass runs once
   and no part is differentiated twice. Under DDP the trainer runs the step in ``no_sync()`` and the gradients
   are averaged here in one flat all-reduce (then clipped, for the methods with ``max_norm``).

Weights come from TorchJD's weightings (``torchjd.aggregation``) where it has them, evaluated under a forked RNG
so they never consume the training's random stream.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from crosstask_cli.errors import ConfigError, MissingDependencyError
from crosstask_cli.weighting.base import TASKS, TaskWeighting, clip_shared_grad_norm_, register_weighting
from crosstask_cli.weighting.catalog import HYPERPARAMETERS

GRAD_SPACES = next(h for h in HYPERPARAMETERS if h.name == "grad_space").choices
GRADNORM_PARAMS = next(h for h in HYPERPARAMETERS if h.name == "gradnorm_params").choices


@register_weighting("gradnorm")
class GradNormWeighting(TaskWeighting):
    """Chen et al. 2018, GradNorm (ICML), with the original cross-task method's settings.

    Learnable task weights w_t (renormalised after each step to sum to the task count, kept positive).
    Their gradient is that of L_grad = Σ_t |w_t·g_t − mean(w·g)·r_t^α|, where g_t is the norm of ∇L_t (the
    unweighted task loss) at the shared parameters and r_t the task's relative inverse training rate
    (L_t/L_t(0) over its mean, L(0) from the first batch). The target term is a constant, so
    ∂L_grad/∂w_t = sign(·)·g_t, set directly on w.grad. The g_t come from the same per-task ``autograd.grad``
    calls that give the model its gradients (see :meth:`backward`), so no part is differentiated twice.

    Defaults as the original: asymmetry ``alpha`` = 0.16; ``params="conv"`` measures g_t at the encoder's last
    convolution weight (``layer4[-1].conv2.weight``), ``"block"`` at every parameter of the last layer4 block;
    the weights are trained by their own Adam (betas 0.9/0.999, the model's initial lr, no schedule).
    """

    needs_features = True
    sets_gradients = True

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
        """Set the weights' gradient from the task gradient norms and the model's gradients of ``total``.

        One ``autograd.grad`` per task reaches the encoder's outputs, the task's own parameters and the layer
        where the norms are measured; the model's gradients of Σ_t w_t·L_t are then assembled from those as the
        gradient methods do (:func:`set_task_gradients`), so no part is differentiated twice. With an fp16
        GradScaler the norms are taken of the scaled losses' gradients (so that small fp16 gradients do not
        underflow) and divided by the scale; every gradient is stored scaled, so that ``scaler.step`` unscales
        it and skips the step when any gradient overflowed.
        """
        features, self._features = self._features, None
        stacked = torch.stack([losses[t] for t in self.tasks])
        if not (self.training and stacked.requires_grad):
            return super().backward(total, losses, model, scaler)
        if not features:
            raise RuntimeError("gradnorm: no encoder features of this step (call attach(model) first)")
        scale = 1.0
        if scaler is not None and scaler.is_enabled():
            scaler.scale(total)  # creates the scaler's state on its first step (unscale_ and step need it)
            scale = scaler.get_scale()
        w = self.task_weights
        params = self._shared_params(model)
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        shared_ids = {id(p) for p in shared}
        own = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        late = downstream_shared(model, shared)
        inputs = [*features, *late, *own, *params]
        # each task loss itself, not an element of ``stacked``: differentiating through the stack would send (zero)
        # gradients into every task's graph
        raw = [torch.autograd.grad(losses[t] * scale, inputs, retain_graph=True, allow_unused=True) for t in self.tasks]
        first = len(features) + len(late) + len(own)
        norms = []
        for grads in raw:
            sq = sum((g.float().square().sum() for g in grads[first:] if g is not None), torch.zeros(()))
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
        weights = w.detach().tolist()  # this step's total is Σ w_t·L_t with the weights before their update
        set_task_gradients(raw, features, late, own, weights, weights, from_features=True)
        self.average_gradients_([*shared, *own])

    @torch.no_grad()
    def after_step(self) -> None:
        w = self.task_weights
        w.clamp_(min=self.min_weight)
        w.mul_(len(self.tasks) / w.sum())

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.detach().tolist(), strict=True))


def downstream_shared(model: nn.Module, shared: list[nn.Parameter]) -> list[nn.Parameter]:
    """The shared parameters outside ``model.encoder`` (applied after the features the weightings see): SegNet-MTAN's
    attention blocks, which every task's branch applies to its own maps; empty for the other architectures."""
    encoder = getattr(model, "encoder", None)
    inside = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    return [p for p in shared if id(p) not in inside]


def task_gramian(
    losses: list[torch.Tensor], inputs: list[torch.Tensor], scale: float = 1.0
) -> tuple[torch.Tensor, list[tuple[torch.Tensor | None, ...]]]:
    """Per-task gradients of ``losses`` (K scalars) with respect to ``inputs`` and their Gramian.

    Returns (G: K×K float64, the raw gradients: one tuple per task, None where a task does not reach an input).
    ``scale`` multiplies each loss before differentiation (a GradScaler's scale); the raw gradients keep it and
    G is divided by its square. The graph is retained for the final backward pass.
    """
    raw = [torch.autograd.grad(loss * scale, inputs, retain_graph=True, allow_unused=True) for loss in losses]
    return gramian_of(raw, scale), raw


def gramian_of(raw: list[tuple[torch.Tensor | None, ...]], scale: float = 1.0) -> torch.Tensor:
    """G[s, t] = Σ over inputs of ⟨g_s, g_t⟩ / scale², float64 on the CPU (a missing gradient counts as 0).
    The products are summed on the gradients' device and copied to the host once."""
    k = len(raw)
    pairs = [(s, t) for s in range(k) for t in range(s, k)]
    sums = []
    for s, t in pairs:
        dots = [
            (a.float() * b.float()).sum(dtype=torch.float64)
            for a, b in zip(raw[s], raw[t], strict=True)
            if a is not None and b is not None
        ]
        sums.append(torch.stack(dots).sum() if dots else None)
    device = next((x.device for x in sums if x is not None), torch.device("cpu"))
    values = torch.stack([x if x is not None else torch.zeros((), dtype=torch.float64, device=device) for x in sums])
    values = values.cpu() / scale**2
    G = torch.zeros(k, k, dtype=torch.float64)
    for (s, t), value in zip(pairs, values, strict=True):
        G[s, t] = G[t, s] = value
    return G


def torchjd_weighting(name: str, **kwargs: Any) -> Any:
    """TorchJD's ``torchjd.aggregation.<name>`` built once, at the method's construction, so that a missing solver
    (TorchJD's extras: quadprog, cvxpy with ECOS and Clarabel, scipy) is reported before training starts."""
    import torchjd.aggregation as aggregation

    try:
        return getattr(aggregation, name)(**kwargs)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{name} needs TorchJD's solver extras, which are not installed ({exc}); "
            'install them with: pip install "torchjd[full]"'
        ) from exc


def set_task_gradients(
    raw: list[tuple[torch.Tensor | None, ...]],
    features: list[torch.Tensor],
    encoder: list[nn.Parameter],
    own: list[nn.Parameter],
    encoder_weights: list[float],
    head_weights: list[float],
    from_features: bool | None = None,
) -> None:
    """Stage 3 of the module doc. ``raw[t]``: task t's gradients with respect to ``[*features, *encoder, *own,
    …]`` (anything after is ignored). Every parameter in ``own`` gets Σ_t head_weights[t]·∂L_t/∂p; the shared
    parameters get Σ_t encoder_weights[t]·∇L_t: those in ``encoder`` from ``raw``, and with ``from_features``
    (default: when ``encoder`` is empty) the ones upstream of the features by one backward pass from them. Shared
    parameters downstream of the features (SegNet-MTAN's shared attention blocks) are listed in ``encoder`` with
    ``from_features=True``."""
    n, m = len(features), len(encoder)
    for k, p in enumerate(own, start=n + m):
        _accumulate(p, [h * g[k] for h, g in zip(head_weights, raw, strict=True) if g[k] is not None])
    for k, p in enumerate(encoder, start=n):
        _accumulate(p, [wt * g[k] for wt, g in zip(encoder_weights, raw, strict=True) if g[k] is not None])
    if not (from_features if from_features is not None else not encoder):
        return
    sent = []
    for k, feature in enumerate(features):
        parts = [wt * g[k] for wt, g in zip(encoder_weights, raw, strict=True) if g[k] is not None]
        if parts:
            sent.append((feature, torch.stack(parts).sum(0).to(feature.dtype)))
    torch.autograd.backward([f for f, _ in sent], grad_tensors=[g for _, g in sent])


def _accumulate(p: nn.Parameter, parts: list[torch.Tensor]) -> None:
    if not parts:
        return
    g = (torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]).to(p.dtype)
    p.grad = g if p.grad is None else p.grad + g


class GramianWeighting(TaskWeighting):
    """Base of the methods whose weights are a function of the Gramian of the per-task gradients (module doc).

    Subclasses implement :meth:`gramian_weights` (G: K×K float64 on the CPU → K weights), may override
    :meth:`head_weights` and may set ``max_norm`` (the shared encoder's gradient is clipped to it after the
    gradients are set; 0 = never). The weights act on the shared encoder; every task-specific part (decoder,
    TaskTransferNet) receives its own task's gradient times the head weight (1), as TorchJD's ``mtl_backward``
    and LibMTL do.
    """

    max_norm = 0.0
    needs_features = True
    sets_gradients = True
    solver_name: str | None = None  # a TorchJD weighting that gives the weights from G alone (built once)
    solver_options: dict[str, Any] = {}

    def __init__(self, tasks: tuple[str, ...] = TASKS, grad_space: str = "features") -> None:
        super().__init__(tasks)
        if self.solver_name is not None:
            self.solver = torchjd_weighting(self.solver_name, **self.solver_options)
        if len(self.tasks) < 2:
            raise ConfigError(f"--weighting {self.name} balances task gradients and needs two tasks")
        if grad_space not in GRAD_SPACES:
            raise ConfigError(f"--grad-space must be one of {', '.join(GRAD_SPACES)}, got {grad_space!r}")
        self.grad_space = grad_space
        self.register_buffer("last", torch.ones(len(self.tasks)))

    def combine(self, losses: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        return sum(losses[t] for t in self.tasks)  # logged; the update is Σ w·∇L with w from the gradients

    def gramian_weights(self, gramian: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """K weights from the K×K Gramian (float64, CPU); ``values``: the global task losses (K, float64, CPU).
        By default the TorchJD weighting named by ``solver_name``."""
        return self.solver(gramian)

    def head_weights(self, values: torch.Tensor) -> torch.Tensor:
        """Multipliers of each task's gradient in its own decoder and TaskTransferNet (K, float64)."""
        return torch.ones_like(values)

    def backward(self, total: torch.Tensor, losses: dict[str, torch.Tensor], model: nn.Module, scaler=None) -> None:
        """Set every parameter's .grad for this step (module doc). Under DDP the caller runs the forward and this
        in ``no_sync()``; the gradients are averaged here (``sets_gradients``)."""
        task_losses = [losses[t] for t in self.tasks]
        features, self._features = self._features, None
        if not (self.training and total.requires_grad):
            return super().backward(total, losses, model, scaler)
        if not features:
            raise RuntimeError(f"{self.name}: no encoder features of this step (call attach(model) first)")
        scale = 1.0
        if scaler is not None and scaler.is_enabled():
            scaler.scale(total)  # creates the scaler's state on its first step (unscale_ and step need it)
            scale = scaler.get_scale()
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        shared_ids = {id(p) for p in shared}
        own = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        # feature space: the shared parameters the features do not reach (downstream of them) get their weighted
        # gradients from stage 1 too
        encoder = shared if self.grad_space == "encoder" else downstream_shared(model, shared)
        # stage 1: one pass per task through its own parts: gradients at the features, its parameters and, in
        # encoder space, the encoder's parameters (scaled like the losses)
        inputs = [*features, *encoder, *own]
        raw = [torch.autograd.grad(loss * scale, inputs, retain_graph=True, allow_unused=True) for loss in task_losses]
        n, m = len(features), len(encoder)
        if self.grad_space == "encoder":  # the global gradients: averaged over processes before G is formed
            flat = torch.stack([torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                           for x, p in zip(g[n : n + m], encoder, strict=True)]) for g in raw])  # fmt: skip
            J = self.global_mean_(flat).double() / scale
            G = (J @ J.T).cpu()
        else:
            G = gramian_of([g[:n] for g in raw], scale)
            if self._all_reduce_mean_ is not None:  # Σ_r G_r / W²: each process's features reach only its losses
                G = self.global_mean_(G.to(total.device)).cpu() / torch.distributed.get_world_size()
        values = self.global_mean_(torch.stack([v.detach().float() for v in task_losses])).cpu().double()
        if bool(torch.isfinite(G).all()):
            with torch.random.fork_rng(devices=[]):
                w = self.gramian_weights(G, values).double()
        else:  # an fp16 overflow: the GradScaler will skip this step; the method's state is left untouched
            w = torch.ones(len(self.tasks), dtype=torch.float64)
        self.last.copy_(w.to(self.last))
        set_task_gradients(raw, features, encoder, own, w.tolist(), self.head_weights(values).tolist(),
                           from_features=self.grad_space != "encoder")  # fmt: skip
        self.average_gradients_([*shared, *own])  # under DDP: the global batch's gradients, then clipped
        clip_shared_grad_norm_(model, self.max_norm, scale)

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.last.tolist(), strict=True))


@register_weighting("mgda")
class MGDAWeighting(GramianWeighting):
    """Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS), MGDA-UB: the
    minimum-norm point of the convex hull of the task gradients (weights ≥ 0 summing to 1), found by the
    paper's Frank-Wolfe solver (TorchJD ``MGDAWeighting``: tolerance 0.001, at most 100 iterations). The paper
    takes the gradients at the shared representation, our default ``grad_space``. Gradients are not
    normalised (the paper's "none" normalisation)."""

    solver_name = "MGDAWeighting"
    solver_options = {"epsilon": 0.001, "max_iters": 100}


@register_weighting("pcgrad")
class PCGradWeighting(GramianWeighting):
    """Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (NeurIPS), PCGrad: each task gradient loses
    its component along every other task gradient it conflicts with (negative inner product), in random order;
    the update is the sum. TorchJD ``PCGradWeighting`` (with two tasks the order does not matter). No
    hyper-parameters. With ``grad_space="encoder"`` this is PCGrad on the encoder's parameters, as crosstask's
    earlier implementation (same results on the same gradients)."""

    solver_name = "PCGradWeighting"


@register_weighting("cagrad")
class CAGradWeighting(GramianWeighting):
    """Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning" (NeurIPS), CAGrad: the update
    g₀ + c·‖g₀‖·g_w/‖g_w‖, g₀ the mean gradient and g_w the convex combination that minimises g_wᵀg₀ +
    c‖g₀‖‖g_w‖ (TorchJD ``CAGradWeighting``). As the official implementation (its defaults ``rescale=1`` and
    "to match the sum loss"), the update is then multiplied by K/(1 + c²). ``c`` = 0.4 (the paper's value for
    NYUv2 and CityScapes); ``max_norm`` = 1.0 (official code). c = 0 gives the plain sum of the gradients."""

    def __init__(
        self, tasks: tuple[str, ...] = TASKS, grad_space: str = "features", c: float = 0.4, max_norm: float = 1.0
    ) -> None:
        super().__init__(tasks, grad_space)
        if c < 0:
            raise ConfigError(f"--cagrad-c must be ≥ 0, got {c}")
        self.c, self.max_norm = float(c), float(max_norm)
        self.solver = torchjd_weighting("CAGradWeighting", c=self.c)

    def gramian_weights(self, gramian: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        k = gramian.shape[0]
        return self.solver(gramian) * (k / (1 + self.c**2))


@register_weighting("imtl")
class IMTLWeighting(GramianWeighting):
    """Liu et al. 2021, "Towards Impartial Multi-task Learning" (ICLR), IMTL-G (the gradient part only, not
    the hybrid with IMTL-L's learned loss scales): weights summing to 1 such that the update has equal
    projections on every task's unit gradient (TorchJD ``IMTLGWeighting``, which extends it to linearly
    dependent gradients). No hyper-parameters."""

    solver_name = "IMTLGWeighting"


@register_weighting("aligned-mtl")
class AlignedMTLWeighting(GramianWeighting):
    """Senushkin et al. 2023, "Independent Component Alignment for Multi-Task Learning" (CVPR), Aligned-MTL: the
    task gradients are made orthogonal with equal norms (the condition number of the gradient matrix becomes
    1) and rescaled by the smallest singular value (the paper's Algorithm 1), then averaged (TorchJD
    ``AlignedMTLWeighting``, ``scale_mode="min"``). No hyper-parameters."""

    solver_name = "AlignedMTLWeighting"
    solver_options = {"scale_mode": "min"}


@register_weighting("upgrad")
class UPGradWeighting(GramianWeighting):
    """Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", UPGrad: every task gradient is
    projected onto the dual cone of all of them (so it conflicts with none) and the projections are averaged
    (TorchJD ``UPGradWeighting``: uniform preference, quadprog projector with its default regularisation). The
    update has a non-negative inner product with every task gradient. No hyper-parameters."""

    solver_name = "UPGradWeighting"


@register_weighting("fairgrad")
class FairGradWeighting(GramianWeighting):
    """Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning" (ICML), FairGrad: weights w ≥ 0 that
    solve G·w = w^(−1/α) (α-fair utility maximisation; α = 1 is proportional fairness, close to Nash-MTL),
    by ``scipy.optimize.least_squares`` (TorchJD ``FairGradWeighting``). ``alpha`` = 1.0 and ``max_norm`` = 1.0
    (the official experiment scripts' defaults)."""

    def __init__(
        self, tasks: tuple[str, ...] = TASKS, grad_space: str = "features", alpha: float = 1.0, max_norm: float = 1.0
    ) -> None:
        super().__init__(tasks, grad_space)
        if alpha < 0:
            raise ConfigError(f"--fairgrad-alpha must be ≥ 0, got {alpha}")
        self.alpha, self.max_norm = float(alpha), float(max_norm)
        self.solver = torchjd_weighting("FairGradWeighting", alpha=self.alpha)

    def gramian_weights(self, gramian: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.solver(gramian)


@register_weighting("nash-mtl")
class NashMTLWeighting(GramianWeighting):
    """Navon et al. 2022, "Multi-Task Learning as a Bargaining Game" (ICML), Nash-MTL: weights α > 0 solving
    the bargaining condition G·α = 1/α, by the paper's sequence of convex approximations (TorchJD's Nash-MTL weighting, cvxpy with ECOS). Defaults as the paper and its code:
    ``optim_niter`` = 20, ``update_weights_every`` = 1, ``max_norm`` = 1.0 (the shared encoder's gradient is
    clipped to this norm after the update, as the official code; TorchJD's own clipping of wᵀJ is not used,
    since J here may be the features' gradient). State (the previous α, which warm-starts the solver, and the
    step count) is checkpointed.

    Cost: TorchJD solves with cvxpy on the host at every update, which can dominate a GPU step (README, task
    weighting bench); ``--nash-update-every N`` reuses the weights for N steps. Accuracy: with task gradients 1000× apart in norm the solve misses the smaller task's condition by
    about 8× (100× apart: within 2 %).
    """

    def __init__(
        self,
        tasks: tuple[str, ...] = TASKS,
        grad_space: str = "features",
        update_weights_every: int = 1,
        optim_niter: int = 20,
        max_norm: float = 1.0,
    ) -> None:
        super().__init__(tasks, grad_space)
        if update_weights_every < 1 or optim_niter < 1:
            raise ConfigError("--nash-update-every and --nash-iters must be positive integers")
        self.max_norm = float(max_norm)
        self.solver = torchjd_weighting(
            "NashMTL",
            n_tasks=len(self.tasks),
            max_norm=0.0,
            update_weights_every=update_weights_every,
            optim_niter=optim_niter,
        ).weighting

    def gramian_weights(self, gramian: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        # TorchJD's Nash-MTL takes the matrix J and forms JJᵀ itself: any M with MMᵀ = G gives the same weights.
        eigenvalues, vectors = torch.linalg.eigh(gramian)
        root = vectors * eigenvalues.clamp(min=0).sqrt()
        with warnings.catch_warnings():
            # cvxpy warns on every solve that the problem is "not DPP" (no speed-up from re-solving) and, with
            # gradients of very different sizes, that the "solution may be inaccurate"; neither is actionable
            # per step (see the class doc for the accuracy measured)
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            warnings.filterwarnings("ignore", message=".*may be inaccurate.*")
            return self.solver(root)

    def get_extra_state(self) -> dict:
        return {
            "prvs_alpha": torch.as_tensor(self.solver.prvs_alpha, dtype=torch.float64).clone(),
            "step": float(self.solver.step),
        }

    def set_extra_state(self, state: dict) -> None:
        import numpy as np

        self.solver.reset()
        self.solver.prvs_alpha = np.asarray(state["prvs_alpha"].numpy(), dtype=np.float32)
        self.solver.step = float(state["step"])
        if self.solver.step > 0:  # the solver's problem is built on its first call; a resumed one starts later
            self.solver._init_optim_problem()


@register_weighting("db-mtl")
class DualBalancingWeighting(GramianWeighting):
    """Lin et al. 2023, "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029), DB-MTL: loss-scale balancing
    by a logarithm (each task contributes ∇log L_t = ∇L_t / L_t) and gradient-magnitude balancing: each task's
    log-loss gradient is scaled to the largest of their (exponential-moving-average) norms. Defaults as the
    authors' LibMTL: ``beta`` = 0.9, ``beta_sigma`` = 0 (the EMA factor at step k is β/k^σ).

    Difference from the paper: the paper keeps a moving average of the full per-task gradient vectors and
    steps along Σ_t α_t·ĝ_t; here the moving average is of their norms, and the balanced weights
    w_t = α_t / L_t apply to the current gradients at the encoder (each decoder follows its ∇log L_t). That keeps
    DB-MTL a weighting of the current step (one backward pass, feature-space gradients, DDP) at the price of the
    paper's gradient momentum.
    """

    def __init__(
        self, tasks: tuple[str, ...] = TASKS, grad_space: str = "features", beta: float = 0.9, beta_sigma: float = 0.0
    ) -> None:
        super().__init__(tasks, grad_space)
        if not 0 <= beta < 1 or beta_sigma < 0:
            raise ConfigError(f"DB-MTL needs 0 ≤ beta < 1 and beta_sigma ≥ 0, got {beta} and {beta_sigma}")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.register_buffer("norms", torch.zeros(len(self.tasks), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def distributed_sync_(self, all_reduce_mean_, first_step: bool) -> None:
        pass  # the moving average is built from the global Gramian and losses, identically on every process

    def gramian_weights(self, gramian: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        eps = 1e-8
        log_norms = gramian.diagonal().clamp(min=0).sqrt() / (values + eps)  # ‖∇ log L_t‖
        step = int(self.steps) + 1
        beta = self.beta / step**self.beta_sigma
        # LibMTL's buffer starts at 0: after step 1 it holds (1 − β)·g; the ratios below do not see that factor
        ema = self.norms.cpu() * beta + (1 - beta) * log_norms
        self.norms.copy_(ema)
        self.steps += 1
        alpha = ema.max() / (ema + eps)
        return alpha / (values + eps)

    def head_weights(self, values: torch.Tensor) -> torch.Tensor:
        return 1 / (values + 1e-8)  # each decoder follows ∇log L_t, as in the paper
