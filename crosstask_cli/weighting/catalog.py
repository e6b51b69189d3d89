"""What every task-weighting method is, without importing torch: its name, kind, reference and hyper-parameters.

This is the one place a method's hyper-parameters are declared (config keyword, default, allowed range, help, the
constructor argument they fill). ``crosstask train`` derives its flags and ``TrainConfig`` its fields and
validation from :data:`HYPERPARAMETERS`; :meth:`TaskWeighting.from_options` builds a method from them. The command
line reads this module to draw ``--help``, so it imports nothing heavy; the implementations are in
:mod:`.loss_based` and :mod:`.gradient_based`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crosstask_cli.errors import ConfigError
from crosstask_cli.options import HyperParameter

# In the order of the config (and of config.json).
HYPERPARAMETERS: tuple[HyperParameter, ...] = (
    HyperParameter(
        "grad_space",
        "features",
        "Where gradient methods (mgda … fairgrad, not gradnorm) take the per-task gradients: features (default; "
        "the encoder's outputs, backpropagating the encoder once) or encoder (its parameters: exact, every task "
        "backpropagated through the encoder).",
        choices=("features", "encoder"),
    ),
    HyperParameter("cagrad_c", 0.4, "CAGrad's c (0.4, the paper's for NYUv2 and CityScapes).", low=0.0),
    HyperParameter(
        "nash_update_every", 1, "Nash-MTL: solve for new weights every N steps (1, the paper's).", low=1, integer=True
    ),  # fmt: skip
    HyperParameter(
        "nash_iters", 20, "Nash-MTL: iterations of its convex-concave solver per update (20).", low=1, integer=True
    ),  # fmt: skip
    HyperParameter("fairgrad_alpha", 1.0, "FairGrad's α (1.0, the official scripts' default).", low=0.0),
    HyperParameter("famo_lr", 0.025, "FAMO: learning rate of its task logits (0.025, the paper's).", low=0.0),
    HyperParameter(
        "famo_decay", 0.01, "FAMO: weight decay γ of its task logits (0.01, the official scripts').", low=0.0
    ),  # fmt: skip
    HyperParameter(
        "dbmtl_beta",
        0.9,
        "DB-MTL: moving-average factor β of the gradient norms (0.9).",
        low=0.0,
        high=1.0,
        high_open=True,
    ),  # fmt: skip
    HyperParameter("dbmtl_beta_sigma", 0.0, "DB-MTL: β decays as β/k^σ over steps k (σ = 0).", low=0.0),
    HyperParameter(
        "max_grad_norm",
        1.0,
        "nash-mtl, cagrad, famo and fairgrad clip the shared encoder's gradient to this norm after each step, as "
        "their official code does (1.0); 0 disables.",
        low=0.0,
    ),
    HyperParameter(
        "gradnorm_alpha", 0.16, "GradNorm asymmetry α (0.16, the original's; the GradNorm paper used 1.5).", low=0.0
    ),  # fmt: skip
    HyperParameter(
        "gradnorm_params",
        "conv",
        "Where GradNorm measures task gradient norms: conv (default, as the original: the encoder's last conv "
        "weight, layer4[-1].conv2) or block (every parameter of the last layer4 block). Its weights always train "
        "with their own Adam (betas 0.9/0.999, the initial lr, no schedule).",
        choices=("conv", "block"),
    ),
    HyperParameter("dwa_temperature", 2.0, "Temperature T of --weighting dwa (2).", low=0.0, low_open=True),
)
_BY_NAME = {h.name: h for h in HYPERPARAMETERS}


@dataclass(frozen=True)
class Method:
    """A weighting method: ``kind`` ``loss`` (loss values only, one backward pass) or ``gradient`` (per-task
    gradients at the shared encoder); ``module``: the implementation module; ``cite``: its reference;
    ``arguments``: constructor argument → hyper-parameter keyword; ``seeded``: the constructor takes the run's
    seed."""

    name: str
    kind: str
    module: str
    cite: str
    arguments: tuple[tuple[str, str], ...] = ()
    seeded: bool = False

    @property
    def hyperparameters(self) -> tuple[HyperParameter, ...]:
        return tuple(_BY_NAME[h] for _, h in self.arguments)


def _gramian(name: str, cite: str, *arguments: tuple[str, str]) -> Method:
    return Method(name, "gradient", "gradient_based", cite, (("grad_space", "grad_space"), *arguments))


# In the order of listings; fixed first, the default.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fixed", "loss", "loss_based", "default; the plain sum"),
        Method("uncertainty", "loss", "loss_based", "Kendall 2018"),
        Method("dwa", "loss", "loss_based", "Liu 2019", (("temperature", "dwa_temperature"),)),
        Method("rlw", "loss", "loss_based", "Lin 2022", seeded=True),
        Method(
            "famo",
            "loss",
            "loss_based",
            "Liu 2023",
            (("lr", "famo_lr"), ("weight_decay", "famo_decay"), ("max_norm", "max_grad_norm")),
        ),  # fmt: skip
        Method(
            "gradnorm",
            "gradient",
            "gradient_based",
            "Chen 2018",
            (("alpha", "gradnorm_alpha"), ("params", "gradnorm_params")),
        ),  # fmt: skip
        _gramian("mgda", "Sener 2018"),
        _gramian("pcgrad", "Yu 2020"),
        _gramian("cagrad", "Liu 2021", ("c", "cagrad_c"), ("max_norm", "max_grad_norm")),
        _gramian("imtl", "IMTL-G, Liu 2021"),
        _gramian(
            "nash-mtl",
            "Navon 2022",
            ("update_weights_every", "nash_update_every"),
            ("optim_niter", "nash_iters"),
            ("max_norm", "max_grad_norm"),
        ),  # fmt: skip
        _gramian("aligned-mtl", "Senushkin 2023"),
        _gramian("db-mtl", "Lin 2023", ("beta", "dbmtl_beta"), ("beta_sigma", "dbmtl_beta_sigma")),
        _gramian("upgrad", "Quinton 2024"),
        _gramian("fairgrad", "Ban 2024", ("alpha", "fairgrad_alpha"), ("max_norm", "max_grad_norm")),
    )
}


def weighting_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_info(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown weighting {name!r}; choose from {weighting_names()}")
    return METHODS[name]


def weighting_help() -> str:
    """The ``--weighting`` help text: every method by kind with its reference."""
    loss = ", ".join(f"{m.name} ({m.cite})" for m in METHODS.values() if m.kind == "loss")
    grad = ", ".join(f"{m.name} ({m.cite})" for m in METHODS.values() if m.kind == "gradient")
    return f"Task weighting. From loss values: {loss}. From per-task gradients at the shared encoder: {grad}."


def constructor_arguments(name: str, options: Any, seed: int = 0) -> dict[str, Any]:
    """The keyword arguments of method ``name``'s constructor from ``options`` (any object with the
    hyper-parameters as attributes, e.g. ``TrainConfig.optim``; a missing one takes its default)."""
    m = method_info(name)
    kwargs = {arg: getattr(options, hp, _BY_NAME[hp].default) for arg, hp in m.arguments}
    if m.seeded:
        kwargs["seed"] = seed
    return kwargs
