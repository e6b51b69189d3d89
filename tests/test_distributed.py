"""DDP on CPU with the gloo backend: 2 processes."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from crosstask_cli.data.dataset import EpochSampler
from crosstask_cli.engine.config import TrainConfig
from crosstask_cli.engine.trainer import Trainer

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(prepared: Path) -> TrainConfig:
    # fp32 (amp off): the processes are compared with a single process at float tolerance, which bf16 rounding
    # of differently split batches would exceed
    return TrainConfig.for_dataset("synthetic", data=str(prepared), height=32, width=64, enc_layers=18, batch_size=2,
                                   workers=0, epochs=1, weighting="uncertainty", device="cpu", lr=1e-3,
                                   amp="off")  # fmt: skip


def _trained_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.detach().clone() for k, v in trainer.model.named_parameters()}
    state.update({f"weighting.{k}": v.detach().clone() for k, v in trainer.weighting.named_parameters()})
    return state


def _ddp_worker(rank: int, world: int, port: int, prepared: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from crosstask_cli.engine import distributed as ddp

    info = ddp.init_distributed("cpu")
    trainer = Trainer(_config(Path(prepared)), Path(out) / "run", dist=info)
    trainer.setup(Path(prepared))
    trainer.model.train()
    trainer.sampler.set_epoch(0)
    for i, (x, t, ids) in enumerate(trainer.loader):
        if i == STEPS:
            break
        assert trainer._train_step(x.contiguous(memory_format=trainer.fmt), t, ids) is not None
    torch.save(_trained_state(trainer), Path(out) / f"rank{rank}.pt")
    ddp.cleanup(info)


@pytest.fixture
def one_thread():
    """The reference runs single-threaded like the workers; other tests compare bit-exactly at the default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.integration
def test_ddp_ranks_agree_and_match_a_single_process(synthetic_prepared, tmp_path, one_thread):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(synthetic_prepared), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks hold different weights"

    # Single process, same global batch: each rank's half is a separate forward (BatchNorm statistics are
    # per process in DDP without --sync-bn, which is CUDA-only), gradients averaged, one optimizer step.
    ref = Trainer(_config(synthetic_prepared), tmp_path / "ref")
    ref.setup(synthetic_prepared)
    ref.model.train()
    halves = []
    for rank in range(2):
        sampler = EpochSampler(len(ref.train_ds), seed=ref.cfg.runtime.seed, num_replicas=2, rank=rank)
        sampler.set_epoch(0)
        loader = torch.utils.data.DataLoader(ref.train_ds, batch_size=2, sampler=sampler)
        halves.append(list(loader)[:STEPS])
    for step in range(STEPS):
        ref.optimizer.zero_grad(set_to_none=True)
        for rank in range(2):
            x, t, _ = halves[rank][step]
            losses = ref.loss_fn(ref.model(x.contiguous(memory_format=ref.fmt)), t)
            (ref.weighting.combine({k: losses[k] for k in ref.weighting.tasks}, ref.model) / 2).backward()
        ref.optimizer.step()
        ref.weighting.after_step()
    single = _trained_state(ref)
    initial = Trainer(_config(synthetic_prepared), tmp_path / "init")
    initial.setup(synthetic_prepared)
    moved = [k for k, v in _trained_state(initial).items() if not torch.equal(v, single[k])]
    assert len(moved) > 0.9 * len(single)  # training did change the weights
    for k in single:
        assert torch.allclose(r0[k], single[k], atol=2e-5, rtol=1e-4), k


def _resume_worker(rank: int, world: int, port: int, prepared: str, run_dir: str, stop_after: int, resume: bool,
                   weighting: str):  # fmt: skip
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import crosstask_cli as ct

    if stop_after:  # every process stops before the same step, as when the job is cancelled
        calls = {"n": 0}
        real = Trainer._train_step

        def step(self, *args):
            calls["n"] += 1
            if calls["n"] > stop_after:
                raise KeyboardInterrupt
            return real(self, *args)

        Trainer._train_step = step
    cfg = _config(Path(prepared)).replace(save_every_steps=1, max_steps_per_epoch=4, weighting=weighting)
    try:
        ct.train(cfg, run_dir=run_dir, resume=resume)
    except KeyboardInterrupt:
        pass


def _spawn_resume(prepared: Path, run_dir: Path, weighting: str, stop_after: int = 0, resume: bool = False) -> None:
    mp.spawn(_resume_worker, args=(2, _free_port(), str(prepared), str(run_dir), stop_after, resume, weighting),
             nprocs=2, join=True)  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow  # two 2-process trainings: about 30 s on 2 cores; the single-process mid-epoch resume is tested by default
@pytest.mark.parametrize("weighting", ["fixed", "famo"])
def test_ddp_mid_epoch_resume_keeps_every_process_loss_sums(weighting, synthetic_prepared, tmp_path, one_thread):
    """A mid-epoch checkpoint under DDP must carry the partial loss sums of all processes, or the resumed
    epoch's logged means would count rank 0's first steps twice and the other ranks' not at all; FAMO's state
    (logits, previous global losses, Adam state) must continue as if never cut."""
    _spawn_resume(synthetic_prepared, tmp_path / "straight", weighting)
    _spawn_resume(synthetic_prepared, tmp_path / "cut", weighting, stop_after=2)
    partial = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["partial_epoch"]
    assert partial["batches"] == 2 and partial["done"] == 4  # two steps on each of two processes
    _spawn_resume(synthetic_prepared, tmp_path / "cut", weighting, resume=True)
    rows = [list(csv.DictReader((tmp_path / run / "metrics.csv").open())) for run in ("straight", "cut")]
    for key in ("train_seg", "train_depth", "train_total"):
        assert float(rows[1][0][key]) == pytest.approx(float(rows[0][0][key]), rel=1e-5), key
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    wa, wb = (
        torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True)["weighting"]
        for run in ("straight", "cut")
    )
    assert wa["weights"] == pytest.approx(wb["weights"], rel=1e-6)


def _gradnorm_worker(rank: int, world: int, port: int, prepared: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from crosstask_cli.engine import distributed as ddp

    info = ddp.init_distributed("cpu")
    trainer = Trainer(_config(Path(prepared)).replace(weighting="gradnorm"), Path(out) / "run", dist=info)
    trainer.setup(Path(prepared))
    trainer.model.train()
    trainer.sampler.set_epoch(0)
    x, t, ids = next(iter(trainer.loader))
    with torch.no_grad():
        losses = trainer.loss_fn(trainer.model(x.contiguous(memory_format=trainer.fmt)), t)
    local = torch.stack([losses[t] for t in trainer.weighting.tasks]).float()
    assert trainer._train_step(x.contiguous(memory_format=trainer.fmt), t, ids) is not None
    torch.save({"local": local, "initial": trainer.weighting.initial_losses.clone()}, Path(out) / f"gn{rank}.pt")
    ddp.cleanup(info)


@pytest.mark.integration
def test_ddp_gradnorm_reference_losses_are_those_of_the_global_batch(synthetic_prepared, tmp_path, one_thread):
    mp.spawn(_gradnorm_worker, args=(2, _free_port(), str(synthetic_prepared), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "gn0.pt"), torch.load(tmp_path / "gn1.pt")
    assert not torch.allclose(r0["local"], r1["local"])  # the ranks saw different batches
    assert torch.equal(r0["initial"], r1["initial"])
    assert torch.allclose(r0["initial"], (r0["local"] + r1["local"]) / 2, rtol=1e-5)


@pytest.mark.integration
def test_torchrun_launches_the_cli(synthetic_raw, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "crosstask_cli", "train", "synthetic", "--data", str(synthetic_raw), "--run-dir", str(run),
           "--height", "32", "--width", "64", "--enc-layers", "18", "--batch-size", "2", "--workers", "0",
           "--epochs", "2", "--max-steps-per-epoch", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["val_miou"]) >= 0  # validation ran, sharded over both ranks and reduced
    assert proc.stdout.count("done:") == 1  # only rank 0 reports


def test_sync_bn_is_refused_on_cpu(synthetic_prepared, tmp_path):
    from crosstask_cli.engine.distributed import DistInfo

    trainer = Trainer(_config(synthetic_prepared).replace(sync_bn=True), tmp_path / "r", dist=DistInfo(0, 2, 0))
    with pytest.raises(ValueError, match="needs CUDA"):
        trainer.setup(synthetic_prepared)


def _method_worker(rank: int, world: int, port: int, prepared: str, out: str, name: str, tasks: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from crosstask_cli.engine import distributed as ddp

    info = ddp.init_distributed("cpu")
    trainer = Trainer(_method_config(Path(prepared), name, tasks), Path(out) / "run", dist=info)
    trainer.setup(Path(prepared))
    if name == "upgrad":
        trainer.loss_fn = ConflictingTasks(trainer.loss_fn, trainer.weighting)
    trainer.model.train()
    trainer.sampler.set_epoch(0)
    weights, before, grads = [], [], []
    for i, (x, t, ids) in enumerate(trainer.loader):
        if i == STEPS:
            break
        before.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        assert trainer._train_step(x.contiguous(memory_format=trainer.fmt), t, ids) is not None
        weights.append(list(trainer.weighting.weights().values()))
        grads.append({k: p.grad.clone() for k, p in trainer.model.named_parameters()})
    torch.save({**_trained_state(trainer), "weights": torch.tensor(weights), "before": before, "grads": grads},
               Path(out) / f"{name}{rank}.pt")  # fmt: skip
    ddp.cleanup(info)


def _method_config(prepared: Path, name: str, tasks: tuple = ("seg", "depth")) -> TrainConfig:
    # SGD: linear in the gradients, so summation-order rounding stays at rounding level (Adam turns the sign of
    # a gradient that is 0 up to rounding into a step of ±lr)
    return _config(prepared).replace(weighting=name, optimizer="sgd", lr=0.05, tasks=tasks)


def _halves(ref: Trainer) -> list[list]:
    out = []
    for rank in range(2):
        sampler = EpochSampler(len(ref.train_ds), seed=ref.cfg.runtime.seed, num_replicas=2, rank=rank)
        sampler.set_epoch(0)
        out.append(list(torch.utils.data.DataLoader(ref.train_ds, batch_size=2, sampler=sampler))[:STEPS])
    return out


class ConflictingTasks:
    """Wraps a trainer's loss so that the first two task losses conflict by construction: the second becomes
    L₂ − κ·L₁ with κ = max(⟨g₁, g₂⟩, 0)/‖g₁‖² + ½ (g: gradients at the encoder features the weighting sees, κ held
    constant), so ⟨g₁, g₂ − κ·g₁⟩ ≤ −½‖g₁‖² < 0 on every batch, on every CPU. A process's features reach only its
    own batch's losses, so the global batch's Gramian, the mean of such terms, conflicts too."""

    def __init__(self, loss_fn, weighting) -> None:
        self.loss_fn, self.weighting = loss_fn, weighting

    def __call__(self, pred, *targets):
        losses = dict(self.loss_fn(pred, *targets))
        first, second = self.weighting.tasks[:2]
        features = self.weighting._features
        g1 = torch.autograd.grad(losses[first], features, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(losses[second], features, retain_graph=True, allow_unused=True)
        dot = sum((a * b).sum() for a, b in zip(g1, g2, strict=True) if a is not None and b is not None)
        norm = sum(a.square().sum() for a in g1 if a is not None)
        kappa = (dot.clamp(min=0) / norm + 0.5).detach()
        losses[second] = losses[second] - kappa * losses[first]
        return losses


def _reference_upgrad_grads(ref: Trainer, batches) -> tuple[list[float], dict[str, torch.Tensor], torch.Tensor]:
    """The UPGrad update of the global batch, computed directly: G of the global batch from each half's
    per-task gradients at the decoders' inputs; the encoder's gradient Σ_t w_t ∇L_t, the decoders' ∇L_t."""
    from torchjd.aggregation import UPGradWeighting

    from crosstask_cli.weighting import task_gramian

    capture = ct_build("upgrad")
    capture.attach(ref.model)
    loss_fn = ConflictingTasks(ref.loss_fn, capture)
    halves = []
    for x, t, _ in batches:
        losses = loss_fn(ref.model(x.contiguous(memory_format=ref.fmt)), t)
        task_losses = [losses[t] for t in ref.weighting.tasks]
        G, _ = task_gramian(task_losses, capture._features)
        halves.append((task_losses, G))
    ref.model.encoder._forward_hooks.clear()
    G = (halves[0][1] + halves[1][1]) / 4  # the global losses are the halves' mean
    w = UPGradWeighting()(G).tolist()
    names = dict(ref.model.named_parameters())
    enc = [n for n in names if n.startswith("encoder.")]
    rest = [n for n in names if not n.startswith("encoder.")]
    grads = {n: torch.zeros_like(p) for n, p in names.items()}
    for task_losses, _ in halves:
        for wt, loss in zip(w, task_losses, strict=True):
            for n, g in zip(enc, torch.autograd.grad(loss, [names[n] for n in enc], retain_graph=True), strict=True):
                grads[n] += wt * g / 2
            found = torch.autograd.grad(loss, [names[n] for n in rest], retain_graph=True, allow_unused=True)
            for n, g in zip(rest, found, strict=True):
                if g is not None:
                    grads[n] += g / 2
    return w, grads, G


def ct_build(name: str):
    from crosstask_cli.weighting import build_weighting

    return build_weighting(name)


def _reference_famo_step(ref: Trainer, batches) -> list[float]:
    """One FAMO step on the global batch: the method (single process) sees the mean of the halves' losses."""
    per_half = []
    for x, t, _ in batches:
        losses = ref.loss_fn(ref.model(x.contiguous(memory_format=ref.fmt)), t)
        per_half.append(losses)
    mean = {t: (per_half[0][t] + per_half[1][t]) / 2 for t in ref.weighting.tasks}
    total = ref.weighting.combine(mean, ref.model)
    ref.weighting.backward(total, mean, ref.model)
    ref.optimizer.step()
    return list(ref.weighting.weights().values())


@pytest.mark.integration
@pytest.mark.parametrize(
    "tasks",
    [("seg", "depth"), pytest.param(("seg", "depth", "normal"), marks=pytest.mark.slow)],  # 20-25 s each on 2 cores
    ids=["2 tasks", "3 tasks"],
)
@pytest.mark.parametrize("name", ["upgrad", "famo"])
def test_ddp_weighting_methods_match_a_single_process_with_the_global_batch(name, tasks, synthetic_prepared, tmp_path,
                                                                           one_thread):  # fmt: skip
    mp.spawn(_method_worker, args=(2, _free_port(), str(synthetic_prepared), str(tmp_path), name, tasks), nprocs=2,
             join=True)  # fmt: skip
    r0, r1 = torch.load(tmp_path / f"{name}0.pt"), torch.load(tmp_path / f"{name}1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0 if k not in ("before", "grads")), "ranks differ"
    assert all(torch.equal(a[k], b[k]) for a, b in zip(r0["grads"], r1["grads"], strict=True) for k in a)

    ref = Trainer(_method_config(synthetic_prepared, name, tasks), tmp_path / "ref")
    ref.setup(synthetic_prepared)
    ref.model.train()
    halves = _halves(ref)
    assert r0["weights"].shape[1] == len(tasks)
    if name == "upgrad":
        # every step from the processes' own starting point (BatchNorm over 2 images of 1×2 pixels in layer4
        # amplifies rounding across steps): the same weights and gradients as the whole batch in one process
        for i in range(STEPS):
            ref.model.load_state_dict(r0["before"][i])
            w, grads, G = _reference_upgrad_grads(ref, [halves[0][i], halves[1][i]])
            # the first two tasks conflict (ConflictingTasks), so UPGrad is not the mean: with two tasks each weight
            # is ½(1 + |G₁₂|/G_jj) > ½
            assert G[0, 1] < 0 and (len(tasks) > 2 or min(w) > 0.5), (i, G, w)
            assert torch.allclose(r0["weights"][i], torch.tensor(w, dtype=torch.float32), rtol=1e-5), i
            for k, g in grads.items():
                assert (r0["grads"][i][k] - g).norm() <= 1e-4 * g.norm() + 1e-12, (i, k)
        return
    weights = []
    for i in range(STEPS):
        ref.optimizer.zero_grad(set_to_none=True)
        weights.append(_reference_famo_step(ref, [halves[0][i], halves[1][i]]))
    assert torch.allclose(r0["weights"], torch.tensor(weights), rtol=1e-4, atol=1e-6)
    assert len({tuple(w) for w in weights}) > 1  # FAMO's weights moved
    single = _trained_state(ref)
    for k in single:
        assert torch.allclose(r0[k], single[k], atol=2e-5, rtol=1e-4), k


def _kd_config(prepared: Path, teachers: tuple[str, ...]) -> TrainConfig:
    return TrainConfig.for_dataset("synthetic", data=str(prepared), height=32, width=64, batch_size=2, workers=0,
                                   epochs=1, device="cpu", lr=1e-3, amp="off", arch="segnet", consistency="none",
                                   method="kd4mtl", teachers=teachers)  # fmt: skip


def _kd_worker(rank: int, world: int, port: int, prepared: str, out: str, teachers: tuple[str, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from crosstask_cli.engine import distributed as ddp

    info = ddp.init_distributed("cpu")
    trainer = Trainer(_kd_config(Path(prepared), teachers), Path(out) / "run", dist=info)
    trainer.setup(Path(prepared))
    trainer.model.train()
    trainer.sampler.set_epoch(0)
    for i, (x, t, ids) in enumerate(trainer.loader):
        if i == 2:
            break
        assert trainer._train_step(x.contiguous(memory_format=trainer.fmt), t, ids) is not None
    state = _trained_state(trainer)
    state.update({f"adaptors.{k}": v.detach().clone() for k, v in trainer.kd.adaptors.named_parameters()})
    torch.save(state, Path(out) / f"rank{rank}.pt")
    ddp.cleanup(info)


@pytest.mark.integration
def test_ddp_kd4mtl_keeps_the_adaptors_of_every_process_equal(synthetic_prepared, tmp_path, one_thread):
    from crosstask_cli.engine.trainer import train

    teachers = []
    for task in ("seg", "depth"):
        cfg = TrainConfig.for_dataset("synthetic", data=str(synthetic_prepared), height=32, width=64, batch_size=2,
                                      workers=0, epochs=1, max_steps_per_epoch=1, max_val_batches=1, device="cpu",
                                      arch="segnet", tasks=(task,))  # fmt: skip
        train(cfg, run_dir=tmp_path / task)
        teachers.append(f"{task}={tmp_path / task / 'checkpoints/last.pt'}")
    mp.spawn(_kd_worker, args=(2, _free_port(), str(synthetic_prepared), str(tmp_path), tuple(teachers)), nprocs=2,
             join=True)  # fmt: skip
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    adaptors = [k for k in r0 if k.startswith("adaptors.")]
    assert len(adaptors) == 4
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks hold different weights or adaptors"
