"""Every registered weighting method with 2, 3 and 5 tasks: a finite update of the right shape for every parameter,
weights that follow the method's definition where it has a closed form (or a defining property), and its state
through a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crosstask_cli.weighting import build_weighting, weighting_class, weighting_names

COUNTS = (2, 3, 5)


class ManyHeads(nn.Module):
    """A shared encoder (a list of features, like ResNetEncoder) and one linear head per task."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(k))
        self.last_shared_layer = self.encoder.layer  # where GradNorm measures its norms (block)

    @property
    def last_shared_weight(self):
        return self.encoder.layer.weight

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def forward(self, x):
        f = self.encoder(x)[0]
        return [head(f) for head in self.heads]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 8)

    @property
    def last_shared_layer(self):
        return self.layer

    @property
    def last_shared_weight(self):
        return self.layer.weight

    def forward(self, x):
        return [torch.tanh(self.layer(x))]


def _names(k: int) -> tuple[str, ...]:
    return tuple(f"t{i}_task" for i in range(k))


def _losses(model: ManyHeads, x, ys, k: int) -> dict[str, torch.Tensor]:
    # targets of different scales, and the second task pulling against the first: the tasks conflict
    out = model(x)
    return {
        n: ((o - (1 + i) * (-1) ** i * y) ** 2).mean()
        for i, (n, o, y) in enumerate(zip(_names(k), out, ys, strict=True))
    }


def _step(method, model, x, ys, k):
    losses = _losses(model, x, ys, k)
    total = method.combine(losses, model)
    method.backward(total, losses, model)
    for opt in method_opts.get(id(method), []):
        opt.step()
    method.after_step()
    return total


method_opts: dict[int, list] = {}


def _setup(name: str, k: int, seed: int = 0):
    torch.manual_seed(seed)
    model = ManyHeads(k)
    method = build_weighting(name, _names(k))
    method.attach(model)
    method.train()
    method_opts[id(method)] = method.configure_optimizers(1e-3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g)
    ys = [torch.randn(16, 1, generator=g) for _ in range(k)]
    return model, method, x, ys


@pytest.mark.parametrize("k", COUNTS)
@pytest.mark.parametrize("name", weighting_names())
def test_every_method_gives_a_finite_update_and_k_weights(name, k):
    model, method, x, ys = _setup(name, k)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        total = _step(method, model, x, ys, k)
        assert math.isfinite(float(total.detach()))
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and torch.isfinite(p.grad).all(), pname
    w = method.weights()
    assert list(w) == list(_names(k)) and all(math.isfinite(v) for v in w.values())
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def _gramian(k: int, seed: int = 1) -> torch.Tensor:
    """A K×K Gramian of K conflicting gradients in 12 dimensions, magnitudes 1 to 30."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(k, 12, generator=g, dtype=torch.float64)
    J[1] = -0.7 * J[0] + 0.3 * J[1]
    J = J * torch.logspace(0, math.log10(30), k, dtype=torch.float64)[:, None]
    return J


@pytest.mark.parametrize("k", COUNTS)
def test_gramian_methods_follow_their_definition_with_k_tasks(k):
    J = _gramian(k)
    G = J @ J.T
    ones = torch.ones(k, dtype=torch.float64)

    def weights(name, values=ones, **kwargs):
        return build_weighting(name, _names(k), **kwargs).gramian_weights(G, values).double()

    # MGDA: a convex combination at the min-norm point of the hull: no gradient points lower than it (KKT)
    w = weights("mgda")
    d = w @ J
    assert w.min() >= 0 and w.sum().item() == pytest.approx(1.0)
    assert (J @ d >= d @ d - 1e-2 * (d @ d)).all()  # Frank-Wolfe's tolerance (1e-3 of the objective)
    # CAGrad with c = 0: the plain sum; with c: within c‖g₀‖ of the mean gradient, no worse on its worst task
    assert torch.allclose(weights("cagrad", c=0.0) @ J, J.sum(0))
    c, g0 = 0.4, J.mean(0)
    d = weights("cagrad", c=c) @ J * (1 + c**2) / k
    assert (d - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-3)
    assert (J @ d).min() >= (J @ g0).min() - 1e-6 * g0.norm() ** 2
    # IMTL-G: equal projections on every unit gradient
    d = weights("imtl") @ J
    proj = (J / J.norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(proj, proj[0].expand(k), rtol=1e-6)
    # Aligned-MTL: K orthogonal gradients of norm √λ_min, averaged: ‖d‖² = λ_min / K
    d = weights("aligned-mtl") @ J
    assert d.square().sum().item() == pytest.approx(torch.linalg.eigvalsh(G)[0].item() / k, rel=1e-6)
    # UPGrad: the update conflicts with no task
    d = weights("upgrad") @ J
    assert (J @ d >= -1e-9 * G.diagonal().sum()).all()
    # FairGrad: G·w = w^(−1/α)
    w = weights("fairgrad", alpha=2.0)
    assert (w > 0).all() and torch.allclose(G @ w, w ** (-1 / 2.0), rtol=1e-3)
    # DB-MTL: every task's log-loss gradient scaled to the largest norm
    values = torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    w = weights("db-mtl", values)
    contributions = (w[:, None] * J).norm(dim=1)
    assert torch.allclose(contributions, (J / values[:, None]).norm(dim=1).max().expand(k), rtol=1e-6)
    # PCGrad projects only what conflicts: non-conflicting gradients sum plainly
    aligned = J.abs()
    w = build_weighting("pcgrad", _names(k)).gramian_weights(aligned @ aligned.T, ones).double()
    assert torch.allclose(w, ones)


NASH_ECOS_FAILS = pytest.mark.xfail(
    strict=True,
    reason="TorchJD's Nash-MTL (the official code's ECOS solve) stops at α = 1 on this conflicting 3-task Gramian, "
    "the plain sum (issue #28: exact Nash-MTL on the device)",
)


@pytest.mark.parametrize("k", [2, pytest.param(3, marks=NASH_ECOS_FAILS), 5])
def test_nash_mtl_satisfies_the_bargaining_condition_with_k_tasks(k):
    J = _gramian(k)[:, :] / torch.logspace(0, math.log10(30), k, dtype=torch.float64)[:, None]  # its solver's range
    G = J @ J.T
    w = build_weighting("nash-mtl", _names(k)).gramian_weights(G, torch.ones(k, dtype=torch.float64)).double()
    assert (w > 0).all()
    assert torch.allclose(G @ w, 1 / w, rtol=3e-2)


@pytest.mark.parametrize("k", COUNTS)
def test_loss_based_methods_follow_their_closed_forms_with_k_tasks(k):
    names = _names(k)
    values = {n: torch.tensor(float(i + 1), requires_grad=True) for i, n in enumerate(names)}
    assert build_weighting("fixed", names).combine(values).item() == pytest.approx(sum(range(1, k + 1)))
    unc = build_weighting("uncertainty", names)
    assert unc.weights() == dict.fromkeys(names, 0.5)  # ½·exp(−s), s = 0
    dwa = build_weighting("dwa", names, temperature=2.0)
    dwa.epoch_end({n: 2.0 for n in names})
    dwa.epoch_end({n: float(i + 1) for i, n in enumerate(names)})  # ratios (i+1)/2
    r = torch.tensor([(i + 1) / 2 for i in range(k)])
    expected = k * torch.softmax(r / 2.0, 0)
    assert list(dwa.weights().values()) == pytest.approx(expected.tolist(), rel=1e-6)
    rlw = build_weighting("rlw", names, seed=7)
    rlw.train()
    rlw.combine({n: v * 1 for n, v in values.items()})
    w = torch.tensor(list(rlw.weights().values()))
    assert (w > 0).all() and w.sum().item() == pytest.approx(1.0) and torch.allclose(w, rlw.draw(0))
    famo = build_weighting("famo", names, weight_decay=0.0)
    famo.train()
    famo.combine(values).backward()
    z = 1 / k  # softmax(0)
    c = 1 / sum(z / (i + 1) for i in range(k))
    grads = torch.stack([values[n].grad for n in names])
    assert torch.allclose(grads, torch.tensor([c * z / (i + 1) for i in range(k)]), rtol=1e-5)


@pytest.mark.parametrize("k", (3,))
@pytest.mark.parametrize("name", weighting_names())
def test_state_round_trips_through_a_checkpoint(name, k, tmp_path):
    """Two steps, a checkpoint of the method (state dict, its own optimizers), then one more step: a method rebuilt
    from the checkpoint takes the same step."""
    model, method, x, ys = _setup(name, k)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        _step(method, model, x, ys, k)
    path = tmp_path / "w.pt"
    torch.save({"model": model.state_dict(), "state": method.state_dict(),
                "optimizers": [o.state_dict() for o in method_opts[id(method)]]}, path)  # fmt: skip
    saved = torch.load(path, weights_only=True)
    model2, method2, _, _ = _setup(name, k, seed=5)  # other initial weights, overwritten by the checkpoint
    model2.load_state_dict(saved["model"])
    method2.load_state_dict(saved["state"])
    for opt, state in zip(method_opts[id(method2)], saved["optimizers"], strict=True):
        opt.load_state_dict(state)
    for m, mod in ((method, model), (method2, model2)):
        mod.zero_grad(set_to_none=True)
        _step(m, mod, x, ys, k)
    assert method.weights() == pytest.approx(method2.weights(), rel=1e-6, abs=1e-12)
    for (n, p), q in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8), n


def test_gradient_methods_declare_their_kind_in_the_catalog():
    from crosstask_cli.weighting import METHODS

    for name, info in METHODS.items():
        assert weighting_class(name).kind == info.kind
