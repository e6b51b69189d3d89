from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import crosstask_cli as ct
from crosstask_cli.weighting import build_weighting, weighting_names


def test_registry_lists_the_methods_and_rejects_unknown():
    assert {"fixed", "uncertainty", "gradnorm"} <= set(weighting_names())
    with pytest.raises(ValueError, match="unknown weighting"):
        build_weighting("nope")


def test_fixed_is_the_plain_sum():
    w = build_weighting("fixed")
    assert w.combine({"seg_task": torch.tensor(2.0), "depth_task": torch.tensor(0.5)}).item() == 2.5


def test_uncertainty_weights_move_towards_log_of_each_loss():
    w = build_weighting("uncertainty")
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    losses = {"seg_task": torch.tensor(4.0), "depth_task": torch.tensor(0.25)}
    for _ in range(2000):
        opt.zero_grad()
        w.combine(losses).backward()
        opt.step()
    s = w.log_vars.detach()
    # optimum of ½e^{−s}L + ½s is s = log L: the larger loss gets the smaller weight
    assert s[0].item() == pytest.approx(math.log(4.0), abs=1e-3)
    assert s[1].item() == pytest.approx(math.log(0.25), abs=1e-3)
    weights = w.weights()
    assert weights["seg_task"] < weights["depth_task"]


class ToyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 8)

    @property
    def last_shared_layer(self):
        return self.layer

    @property
    def last_shared_weight(self):
        return self.layer.weight

    def forward(self, x):
        return torch.relu(self.layer(x))


class Toy(nn.Module):
    """A shared encoder (one layer) and two heads, shaped like CrossTaskNet for the weighting methods."""

    def __init__(self):
        super().__init__()
        self.encoder = ToyEncoder()
        self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])

    @property
    def shared(self):
        return self.encoder.layer

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def forward(self, x):
        h = self.encoder(x)
        return [head(h) for head in self.heads]


def test_gradnorm_weight_gradient_follows_the_rule_and_weights_stay_normalised():
    torch.manual_seed(0)
    model = Toy()
    w = build_weighting("gradnorm", alpha=1.5, params="block")  # the GradNorm paper's α, the whole block
    w.attach(model)
    opt = torch.optim.Adam(list(model.parameters()) + list(w.parameters()), lr=0.01)
    x, y1, y2 = torch.randn(64, 4), torch.randn(64, 1), 10 * torch.randn(64, 1)
    for step in range(60):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        losses = {"seg_task": ((out[0] - y1) ** 2).mean(), "depth_task": ((out[1] - y2) ** 2).mean()}
        total = w.combine(losses, model)
        if step == 0:
            # hand-computed: g_t = ‖∇_W L_t‖ at the shared layer; ratios are 1 at the first step
            g = []
            for loss in losses.values():
                grads = torch.autograd.grad(loss, list(model.shared.parameters()), retain_graph=True)
                g.append(torch.sqrt(sum((gr**2).sum() for gr in grads)))
            g = torch.stack(g)
            target = g.mean()
        w.backward(total, losses, model)
        if step == 0:
            assert torch.allclose(w.task_weights.grad, torch.sign(g - target) * g, rtol=1e-5)
        opt.step()
        w.after_step()
        tw = w.task_weights.detach()
        assert (tw > 0).all()
        assert tw.sum().item() == pytest.approx(2.0, abs=1e-5)
    # the task with the larger gradient norm (the large-scale regression) is down-weighted
    assert w.weights()["depth_task"] < w.weights()["seg_task"]


def test_gradnorm_defaults_are_the_originals_and_two_steps_match_a_hand_computation():
    """α = 0.16, norms at the last conv weight only, weights trained by their own Adam (0.9/0.999, the initial lr);
    the second step has loss ratios ≠ 1, so the relative inverse training rate enters."""
    torch.manual_seed(0)
    model = Toy()
    w = build_weighting("gradnorm")
    w.attach(model)
    assert w.alpha == 0.16 and w.params == "conv" and w.model_optimizer_parameters() == []
    (own,) = w.configure_optimizers(lr=0.05)
    assert isinstance(own, torch.optim.Adam) and own.defaults["betas"] == (0.9, 0.999)
    model_opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y1, y2 = torch.randn(32, 4), torch.randn(32, 1), 5 * torch.randn(32, 1)
    b1, b2, eps, lr, alpha = 0.9, 0.999, 1e-8, 0.05, 0.16
    weights, m, v, l0 = (torch.ones(2, dtype=torch.float64), 0.0, 0.0, None)
    for step in (1, 2):
        model_opt.zero_grad(set_to_none=True)
        own.zero_grad(set_to_none=True)
        out = model(x)
        losses = {"seg_task": ((out[0] - y1) ** 2).mean(), "depth_task": ((out[1] - y2) ** 2).mean()}
        # by hand: g_t = ‖∂L_t/∂W‖ at the shared weight only (not its bias), r_t = (L_t/L_t(0)) / mean
        g = torch.stack(
            [torch.autograd.grad(loss, model.shared.weight, retain_graph=True)[0].norm() for loss in losses.values()]
        ).double()
        cur = torch.stack(list(losses.values())).detach().double()
        l0 = cur.clone() if l0 is None else l0
        ratio = cur / l0
        if step == 2:
            assert not torch.allclose(ratio, torch.ones(2, dtype=torch.float64), atol=1e-3)
        r = ratio / ratio.mean()
        wg = weights * g
        grad = torch.sign(wg - wg.mean() * r**alpha) * g
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        weights = weights - lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps)
        weights = weights.clamp(min=1e-3)
        weights = weights * 2 / weights.sum()

        w.backward(w.combine(losses, model), losses, model)
        assert torch.allclose(w.task_weights.grad.double(), grad, rtol=1e-5)
        model_opt.step()
        own.step()
        w.after_step()
        assert torch.allclose(w.task_weights.detach().double(), weights, rtol=1e-5), step
    assert not torch.allclose(weights, torch.ones(2, dtype=torch.float64))


def test_gradnorm_params_are_not_in_the_model_optimizer_nor_scheduled(synthetic_prepared, tmp_path):
    from crosstask_cli.engine.config import TrainConfig
    from crosstask_cli.engine.trainer import Trainer

    cfg = TrainConfig.for_dataset(
        "synthetic", height=32, width=64, enc_layers=18, batch_size=2, workers=0, weighting="gradnorm", lr=3e-4,
        scheduler_step_size=1, scheduler_gamma=0.5,
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup(synthetic_prepared)
    in_model_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(trainer.weighting.task_weights) not in in_model_opt
    (own,) = trainer.weighting_optimizers
    assert own.param_groups[0]["params"] == [trainer.weighting.task_weights]
    trainer.optimizer.step()  # no gradients yet: changes nothing, keeps the scheduler's order check quiet
    trainer.scheduler.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert own.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert trainer.weighting._shared_params(trainer.model) == [trainer.model.encoder.layer4[-1].conv2.weight]


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_weighting_state_round_trips(name):
    """Every method with state: a fresh instance loaded from another's state dict reports the same weights and holds
    the same tensors (``fixed`` has no state, so it is not a case)."""
    a = build_weighting(name)
    assert len(a.state_dict()) > 0
    with torch.no_grad():
        for i, (_, t) in enumerate(a.state_dict().items()):
            if t.dtype == torch.bool:
                t.fill_(True)
            else:
                t.copy_(torch.arange(t.numel(), dtype=t.dtype).view_as(t) + 2 + i)
    b = build_weighting(name)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    b.load_state_dict(a.state_dict())
    assert a.weights() == b.weights()
    for (_, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_gradnorm_step_differentiates_each_part_once(synthetic_prepared, monkeypatch, tmp_path):
    """A GradNorm step: one autograd.grad per task that reaches the encoder's outputs, the task-specific
    parameters and the encoder's last convolution weight (where the norms are measured) and nothing else of the
    encoder; then one backward pass from the encoder's outputs into the encoder."""
    from crosstask_cli.engine.config import TrainConfig
    from crosstask_cli.engine.trainer import Trainer

    cfg = TrainConfig.for_dataset(
        "synthetic", height=32, width=64, enc_layers=18, batch_size=2, workers=0, weighting="gradnorm", epochs=1
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup(synthetic_prepared)
    backward_calls, grad_calls = [], []
    original_backward, original_grad = torch.autograd.backward, torch.autograd.grad

    def counting_backward(tensors, *args, **kwargs):
        backward_calls.append(list(tensors) if isinstance(tensors, (list, tuple)) else [tensors])
        return original_backward(tensors, *args, **kwargs)

    def counting_grad(outputs, inputs, *args, **kwargs):
        grad_calls.append(list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
        return original_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    traversed = []
    for name in ("seg_decoder", "depth_decoder", "seg_to_depth", "depth_to_seg"):
        getattr(trainer.model, name).register_full_backward_hook(lambda *a, n=name: traversed.append(n))
    images, targets, ids = next(iter(trainer.loader))
    before = trainer.weighting.task_weights.detach().clone()
    assert trainer._train_step(images, targets, ids) is not None
    assert len(backward_calls) == 1 and len(backward_calls[0]) == 5  # from the encoder's five outputs
    assert sorted(traversed) == sorted(["seg_decoder", "depth_decoder", "seg_to_depth", "depth_to_seg"])  # once each
    shared = trainer.model.encoder.layer4[-1].conv2.weight
    encoder = {id(p) for p in trainer.model.encoder.parameters()}
    assert len(grad_calls) == len(trainer.weighting.tasks)  # one norm per task
    for inputs in grad_calls:
        reached = [t for t in inputs if id(t) in encoder]
        assert len(reached) == 1 and reached[0] is shared
    assert all(p.grad is not None for p in trainer.model.parameters())
    assert not torch.equal(before, trainer.weighting.task_weights.detach())  # weights were updated too
    assert ct.GradNormWeighting is type(trainer.weighting)


def test_gradnorm_under_an_fp16_grad_scaler_gives_the_unscaled_gradients():
    """fp16 AMP scales the loss; GradNorm's own weight gradient must come out of ``scaler.unscale_`` equal to the
    unscaled one, like the model's (the scale is a power of two, so this is exact up to float rounding)."""
    x, y1, y2 = torch.randn(16, 4), torch.randn(16, 1), 3 * torch.randn(16, 1)
    grads = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**14)):
        torch.manual_seed(0)
        model, w = Toy(), build_weighting("gradnorm", alpha=1.5)
        w.attach(model)
        opt = torch.optim.SGD(list(model.parameters()) + list(w.parameters()), lr=0.1)
        for _ in range(2):  # the second step has loss ratios ≠ 1
            opt.zero_grad(set_to_none=True)
            out = model(x)
            losses = {"seg_task": ((out[0] - y1) ** 2).mean(), "depth_task": ((out[1] - y2) ** 2).mean()}
            w.backward(w.combine(losses, model), losses, model, scaler)
            if scaler is None:
                opt.step()
            else:
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
            w.after_step()
        grads.append([w.task_weights.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradnorm_takes_its_initial_losses_from_the_first_step_actually_taken():
    """The trainer combines, checks the total is finite, and only then calls backward; a skipped non-finite
    first batch must not become GradNorm's reference L(0)."""
    torch.manual_seed(0)
    model, w = Toy(), build_weighting("gradnorm")
    w.attach(model)
    x = torch.randn(8, 4)
    out = model(x)
    bad = {"seg_task": out[0].mean() * torch.nan, "depth_task": out[1].square().mean()}
    assert not torch.isfinite(w.combine(bad, model))
    assert not bool(w.initialised)
    good = {"seg_task": out[0].square().mean(), "depth_task": out[1].square().mean()}
    w.backward(w.combine(good, model), good, model)
    expected = torch.stack([good["seg_task"], good["depth_task"]]).detach()
    assert bool(w.initialised) and torch.allclose(w.initial_losses, expected)


def test_gradnorm_model_gradients_are_those_of_the_weighted_sum():
    """Assembled from per-task gradients, the model's gradients equal one backward pass of Σ_t w_t·L_t."""
    torch.manual_seed(0)
    model, w = Toy(), build_weighting("gradnorm")
    w.attach(model)
    with torch.no_grad():
        w.task_weights.copy_(torch.tensor([0.3, 1.7]))
    x, y1, y2 = torch.randn(16, 4), torch.randn(16, 1), 4 * torch.randn(16, 1)
    out = model(x)
    losses = {"seg_task": ((out[0] - y1) ** 2).mean(), "depth_task": ((out[1] - y2) ** 2).mean()}
    w.backward(w.combine(losses, model), losses, model)
    ref = Toy()
    ref.load_state_dict(model.state_dict())
    out = ref(x)
    (0.3 * ((out[0] - y1) ** 2).mean() + 1.7 * ((out[1] - y2) ** 2).mean()).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
