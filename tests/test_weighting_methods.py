"""The 2021–2024 weighting methods: their papers' defining properties on hand-made gradients, the gradient
machinery (feature or encoder space, fp16 scaling), exact resume, and training with each of them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import crosstask_cli as ct
from crosstask_cli.weighting import build_weighting, task_gramian, weighting_class, weighting_names

NEW = ("famo", "rlw", "db-mtl", "nash-mtl", "cagrad", "mgda", "imtl", "aligned-mtl", "upgrad", "fairgrad")
GRADIENT = ("mgda", "pcgrad", "cagrad", "imtl", "aligned-mtl", "upgrad", "fairgrad", "nash-mtl", "db-mtl")


def _cases() -> dict[str, torch.Tensor]:
    """Two-task Jacobians (rows = task gradients): conflicting, aligned, and magnitudes 1000× apart."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    b = b - (b @ a) / (a @ a) * a  # orthogonal to a
    return {
        "conflicting": torch.stack([a, -0.6 * a + b]),
        "aligned": torch.stack([a, 0.5 * a + 0.3 * b]),
        "magnitudes": torch.stack([1000.0 * a, 0.3 * a + b]),
    }


def _weights(name: str, J: torch.Tensor, values: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    method = build_weighting(name, **kwargs)
    values = torch.ones(J.shape[0], dtype=torch.float64) if values is None else values
    return method.gramian_weights(J @ J.T, values).double()


def test_every_method_is_registered_with_a_citing_docstring():
    assert set(NEW) | {"fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"} == set(weighting_names())
    for name in NEW:
        doc = weighting_class(name).__doc__
        assert doc and any(str(year) in doc for year in range(2018, 2025)), name


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_mgda_returns_the_min_norm_point_of_the_convex_hull(case):
    J = _cases()[case]
    w = _weights("mgda", J)
    assert w.min() >= 0 and w.sum().item() == pytest.approx(1.0)
    g1, g2 = J
    # two gradients: the min-norm point of the segment [g1, g2] in closed form
    gamma = float(((g2 - g1) @ g2 / (g1 - g2).square().sum()).clamp(0, 1))
    expected = gamma * g1 + (1 - gamma) * g2
    assert torch.allclose(w @ J, expected, rtol=1e-2, atol=1e-6 * expected.norm())


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_cagrad_with_c_zero_is_the_mean_gradient_and_with_c_stays_in_its_ball(case):
    J = _cases()[case]
    k = J.shape[0]
    # our CAGrad multiplies the update by K / (1 + c²) as the official code; c = 0: K · mean = the plain sum
    assert torch.allclose(_weights("cagrad", J, c=0.0) @ J / k, J.mean(0))
    c = 0.4
    d = _weights("cagrad", J, c=c) @ J * (1 + c**2) / k  # the paper's d = g0 + c‖g0‖ g_w / ‖g_w‖
    g0 = J.mean(0)
    assert (d - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-3)
    # it maximises the worst task's improvement within that ball: never worse than the mean gradient's
    assert (J @ d).min() >= (J @ g0).min() - 1e-6 * g0.norm() ** 2


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_nash_mtl_weights_satisfy_the_bargaining_condition(case):
    J = _cases()[case]
    if case == "magnitudes":  # at 1000× (a Gramian spanning 10⁶) TorchJD's ECOS solve misses the small task by 8×
        J = J * torch.tensor([[0.1], [1.0]], dtype=J.dtype)
    w = _weights("nash-mtl", J)
    G = J @ J.T
    assert (w > 0).all()
    assert torch.allclose(G @ w, 1 / w, rtol=2e-2)  # the paper's Gα = 1/α (its solver works on G/‖G‖ inside)


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_upgrad_update_conflicts_with_no_task(case):
    J = _cases()[case]
    d = _weights("upgrad", J) @ J
    assert (J @ d >= -1e-9 * J.norm() ** 2).all()
    if case == "aligned":  # nothing to project: the mean of the gradients
        assert torch.allclose(d, J.mean(0), rtol=1e-3)


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_imtl_g_update_has_equal_projections_on_the_unit_gradients(case):
    J = _cases()[case]
    w = _weights("imtl", J)
    d = w @ J
    units = J / J.norm(dim=1, keepdim=True)
    proj = units @ d
    assert w.sum().item() == pytest.approx(1.0)
    assert proj[0].item() == pytest.approx(proj[1].item(), rel=1e-6)


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_aligned_mtl_aligns_the_gradients_to_the_smallest_singular_value(case):
    J = _cases()[case]
    G = J @ J.T
    smallest = torch.linalg.eigvalsh(G)[0]
    d = _weights("aligned-mtl", J) @ J
    # the aligned gradients are orthogonal with norm √λ_min each; their mean has ‖d‖² = λ_min / K
    assert d.square().sum().item() == pytest.approx(smallest.item() / 2, rel=1e-6)


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_weights_solve_its_fairness_equation(case, alpha):
    J = _cases()[case]
    w = _weights("fairgrad", J, alpha=alpha)
    G = J @ J.T
    assert (w > 0).all()
    assert torch.allclose(G @ w, w ** (-1 / alpha), rtol=1e-3)


@pytest.mark.parametrize("case", ["conflicting", "aligned", "magnitudes"])
def test_pcgrad_projects_conflicting_gradients_as_the_paper_writes(case):
    J = _cases()[case]
    g1, g2 = J
    if g1 @ g2 < 0:
        expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    else:
        expected = g1 + g2
    assert torch.allclose(_weights("pcgrad", J) @ J, expected)


def test_db_mtl_balances_the_log_loss_gradients_to_the_largest():
    J = _cases()["magnitudes"]
    losses = torch.tensor([2.0, 0.1], dtype=torch.float64)
    method = build_weighting("db-mtl")
    w = method.gramian_weights(J @ J.T, losses).double()
    log_grads = J / losses[:, None]  # ∇ log L = ∇L / L
    biggest = log_grads.norm(dim=1).max()
    contributions = (w[:, None] * J).norm(dim=1)
    assert torch.allclose(contributions, torch.stack([biggest, biggest]), rtol=1e-6)
    # the moving average: a second step with the other task now larger mixes the norms with β = 0.9
    w2 = method.gramian_weights((J.flip(0) @ J.flip(0).T), losses).double()
    n1 = log_grads.norm(dim=1)
    n2 = (J.flip(0) / losses[:, None]).norm(dim=1)
    ema = 0.9 * (0.1 * n1) + 0.1 * n2  # the average starts from 0, as the authors' LibMTL buffer
    assert torch.allclose(w2, (ema.max() / ema) / losses, rtol=1e-6)


def test_rlw_draws_positive_weights_summing_to_one_reproducibly():
    a, b = build_weighting("rlw", seed=3), build_weighting("rlw", seed=3)
    draws = [a.draw(k) for k in range(5)]
    assert all(torch.equal(x, b.draw(k)) for k, x in enumerate(draws))  # same seed and step, same weights
    assert all((x > 0).all() and x.sum().item() == pytest.approx(1.0) for x in draws)
    assert len({tuple(x.tolist()) for x in draws}) == 5
    assert not torch.equal(draws[0], build_weighting("rlw", seed=4).draw(0))


def test_famo_gradient_and_logit_update_follow_the_paper():
    famo = build_weighting("famo", lr=0.025, weight_decay=0.0)
    famo.train()
    first = torch.tensor([2.0, 0.5], requires_grad=True)
    out = famo.combine({"seg_task": first[0], "depth_task": first[1]})
    out.backward()
    # z = softmax(0) = ½; c = (Σ z_i / L_i)⁻¹; ∂/∂L_i = c · z_i / L_i, a convex combination of the gradients
    c = 1 / (0.5 / 2.0 + 0.5 / 0.5)
    assert torch.allclose(first.grad, torch.tensor([c * 0.5 / 2.0, c * 0.5 / 0.5]))
    assert first.grad.sum().item() == pytest.approx(1.0)
    # next step: task 0's log-loss fell by log 2, task 1's by nothing; FAMO raises the weight of task 1
    second = torch.tensor([1.0, 0.5], requires_grad=True)
    famo.combine({"seg_task": second[0], "depth_task": second[1]})
    logits = famo.famo._w.detach()
    # Adam's first step moves each logit by lr against the sign of its gradient (softmax Jacobianᵀ · δ)
    assert torch.allclose(logits, torch.tensor([-0.025, 0.025]), atol=1e-6)
    w = famo.weights()
    assert w["depth_task"] > w["seg_task"]


class TwoHead(nn.Module):
    """A shared encoder (outputs a list of features, like ResNetEncoder) and two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def forward(self, x):
        f = self.encoder(x)[0]
        return [head(f) for head in self.heads]


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 8)

    def forward(self, x):
        return [torch.tanh(self.layer(x))]


def _toy_losses(model, x, y1, y2):
    out = model(x)
    return {"seg_task": ((out[0] - y1) ** 2).mean(), "depth_task": ((out[1] - 5 * y2) ** 2).mean()}


@pytest.mark.parametrize("name", ["upgrad", "nash-mtl", "db-mtl"])
def test_fp16_grad_scaler_gives_the_same_weights_and_update(name):
    """Under an fp16 GradScaler (scale 2^14) the per-task gradients are unscaled before the non-linear
    aggregation: weights and the unscaled gradients equal those without scaling."""
    torch.manual_seed(0)
    x, y1, y2 = torch.randn(16, 4), torch.randn(16, 1), torch.randn(16, 1)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**14)):
        torch.manual_seed(0)
        model, w = TwoHead(), build_weighting(name)
        w.attach(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            losses = _toy_losses(model, x, y1, y2)
            w.backward(w.combine(losses, model), losses, model, scaler)
            if scaler is None:
                opt.step()
            else:
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
            w.after_step()
        results.append([w.last.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gramians_in_both_spaces_equal_explicit_per_task_backward_passes():
    torch.manual_seed(0)
    model = TwoHead()
    x, y1, y2 = torch.randn(16, 4), torch.randn(16, 1), torch.randn(16, 1)
    # reference: one backward pass per task, reading .grad of the encoder and of its output
    rows_params, rows_features = [], []
    for t in ("seg_task", "depth_task"):
        model.zero_grad()
        feats = model.encoder(x)
        feats[0].retain_grad()
        out = [head(feats[0]) for head in model.heads]
        loss = {"seg_task": ((out[0] - y1) ** 2).mean(), "depth_task": ((out[1] - 5 * y2) ** 2).mean()}[t]
        loss.backward()
        rows_params.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
        rows_features.append(feats[0].grad.flatten())
    for rows, inputs in ((rows_params, "params"), (rows_features, "features")):
        J = torch.stack(rows).double()
        feats = model.encoder(x)
        out = [head(feats[0]) for head in model.heads]
        losses = [((out[0] - y1) ** 2).mean(), ((out[1] - 5 * y2) ** 2).mean()]
        wrt = list(model.encoder.parameters()) if inputs == "params" else feats
        G, _ = task_gramian(losses, wrt)
        assert torch.allclose(G, J @ J.T, rtol=1e-5), inputs


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_feature_space_step_traverses_each_part_once(synthetic_prepared, monkeypatch, tmp_path):
    """A gradient method's step: one forward; one autograd.grad per task with respect to the encoder's outputs and
    the task-specific parameters (never the encoder's); then one backward pass from the encoder's outputs into the
    encoder alone. No part of the network is differentiated twice."""
    from crosstask_cli.engine.trainer import Trainer

    cfg = ct.TrainConfig.for_dataset("synthetic", height=32, width=64, enc_layers=18, batch_size=2, workers=0,
                                     weighting="upgrad", epochs=1, amp="off")  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup(synthetic_prepared)
    forwards, backwards, grads = [], [], []
    trainer.model.register_forward_hook(lambda *a: forwards.append(1))
    original_backward, original_grad = torch.autograd.backward, torch.autograd.grad

    def counting_backward(tensors, *args, **kwargs):
        backwards.append(list(tensors) if isinstance(tensors, (list, tuple)) else [tensors])
        return original_backward(tensors, *args, **kwargs)

    def counting_grad(outputs, inputs, *args, **kwargs):
        grads.append(list(inputs))
        return original_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    traversed = []
    for name in ("seg_decoder", "depth_decoder", "seg_to_depth", "depth_to_seg"):
        getattr(trainer.model, name).register_full_backward_hook(lambda *a, n=name: traversed.append(n))
    images, targets, ids = next(iter(trainer.loader))
    assert trainer._train_step(images, targets, ids) is not None
    assert len(forwards) == 1 and len(grads) == 2 and len(backwards) == 1
    assert sorted(traversed) == sorted(["seg_decoder", "depth_decoder", "seg_to_depth", "depth_to_seg"])  # once each
    encoder = {id(p) for p in trainer.model.encoder.parameters()}
    own = {id(p) for p in trainer.model.parameters()} - encoder
    for inputs in grads:
        features, params = inputs[:5], inputs[5:]
        assert all(t.shape[0] == 2 and id(t) not in encoder | own for t in features)  # activations
        assert {id(p) for p in params} == own  # the task-specific parameters, not the encoder's
    assert len(backwards[0]) == 5 and all(t is g for t, g in zip(backwards[0], grads[0][:5], strict=True))
    assert all(p.grad is not None for p in trainer.model.parameters())
    assert trainer.weighting._features is None  # the step's activations are not kept


@pytest.mark.parametrize("name", NEW + ("pcgrad",))
def test_each_method_trains_the_network(name, synthetic_prepared, tmp_path):
    from crosstask_cli.engine.trainer import Trainer

    cfg = ct.TrainConfig.for_dataset("synthetic", height=32, width=64, enc_layers=18, batch_size=2, workers=0,
                                     weighting=name, epochs=1, amp="off")  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup(synthetic_prepared)
    trainer.model.train()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loader = iter(trainer.loader)
    for _ in range(2):
        x, t, ids = next(loader)
        out = trainer._train_step(x.contiguous(memory_format=trainer.fmt), t, ids)
        assert out is not None and math.isfinite(float(out["total"]))
    w = trainer.weighting.weights()
    assert set(w) == {"seg_task", "depth_task"} and all(math.isfinite(v) and v > 0 for v in w.values())
    changed = [
        k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("seg_decoder.") for k in changed)


@pytest.mark.parametrize(
    "name",
    ["famo", *(pytest.param(m, marks=pytest.mark.slow) for m in ("nash-mtl", "db-mtl", "rlw"))],  # 8 s each
)
def test_mid_epoch_resume_continues_the_method_identically(name, synthetic_raw, tmp_path):
    """The method's state (FAMO's logits, previous losses and Adam state; Nash-MTL's previous weights and step;
    DB-MTL's moving average; RLW's step) is checkpointed: a run cut after a step and resumed ends equal."""
    from crosstask_cli.engine.trainer import TrainReporter

    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=1,
                                     enc_layers=18, batch_size=4, workers=0, max_steps_per_epoch=3,
                                     save_every_steps=1, weighting=name, amp="off")  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "straight")

    class Interrupt(TrainReporter):
        steps = 0

        def step(self, loss):
            self.steps += 1
            if self.steps == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ct.train(cfg, run_dir=tmp_path / "cut", reporter=Interrupt())
    ct.train(cfg, run_dir=tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["weighting"]["weights"] == b["weighting"]["weights"]


def test_gradient_methods_refuse_a_single_task_and_bad_hyper_parameters():
    with pytest.raises(ValueError, match="needs two tasks"):
        build_weighting("upgrad", tasks=("seg_task",))
    with pytest.raises(ValueError, match="balances the gradients of two tasks"):
        ct.TrainConfig.for_dataset("synthetic", tasks=("seg",), weighting="mgda")
    with pytest.raises(ValueError, match="--grad-space must be one of"):
        ct.TrainConfig.for_dataset("synthetic", weighting="mgda", grad_space="decoder")
    with pytest.raises(ValueError, match="--cagrad-c must be ≥ 0"):
        ct.TrainConfig.for_dataset("synthetic", cagrad_c=-1.0)
    with pytest.raises(ValueError, match="--dbmtl-beta must be in"):
        ct.TrainConfig.for_dataset("synthetic", dbmtl_beta=1.0)


def test_the_encoder_gets_the_weighted_gradient_and_each_head_its_own():
    torch.manual_seed(0)
    model, w = TwoHead(), build_weighting("mgda")
    w.attach(model)
    x, y1, y2 = torch.randn(16, 4), torch.randn(16, 1), torch.randn(16, 1)
    losses = _toy_losses(model, x, y1, y2)
    w.backward(w.combine(losses, model), losses, model)
    weights = w.last.tolist()
    assert weights[0] != pytest.approx(1.0)  # a real weighting, not the plain sum
    model2 = TwoHead()
    model2.load_state_dict(model.state_dict())
    fresh = _toy_losses(model2, x, y1, y2)
    enc = list(model2.encoder.parameters())
    per_task = [torch.autograd.grad(fresh[t], enc, retain_graph=True) for t in ("seg_task", "depth_task")]
    for k, p in enumerate(model.encoder.parameters()):
        assert torch.allclose(p.grad, weights[0] * per_task[0][k] + weights[1] * per_task[1][k], atol=1e-6)
    for i, t in enumerate(("seg_task", "depth_task")):
        own = torch.autograd.grad(fresh[t], list(model2.heads[i].parameters()), retain_graph=True)
        assert all(torch.allclose(p.grad, g) for p, g in zip(model.heads[i].parameters(), own, strict=True))


def test_a_missing_solver_is_one_clear_error_at_construction(monkeypatch):
    import importlib.abc
    import sys

    from crosstask_cli.errors import MissingDependencyError

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("quadprog", "qpsolvers"):
                raise ImportError(f"No module named {name!r}")
            return None

    monkeypatch.setattr(sys, "meta_path", [Block(), *sys.meta_path])
    for name in [m for m in sys.modules if m.split(".")[0] in ("quadprog", "qpsolvers")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependencyError, match=r"UPGradWeighting needs TorchJD.s solver extras.*torchjd\[full\]"):
        build_weighting("upgrad")
