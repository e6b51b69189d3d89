"""Every architecture trains (with and without TaskTransferNets, with a loss and a gradient weighting), resumes
exactly, and its checkpoint serves eval; KD4MTL trains a student from single-task teachers and refuses wrong ones."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

import crosstask_cli as ct
from crosstask_cli.engine.checkpoint import model_from_checkpoint
from crosstask_cli.errors import CheckpointError, ConfigError
from crosstask_cli.weighting.gradient_based import GramianWeighting


def _cfg(synthetic_raw, **kw):
    base = dict(data=str(synthetic_raw), height=32, width=64, epochs=1, batch_size=2, workers=0,
                max_steps_per_epoch=1, max_val_batches=1, eval_batch_size=2)  # fmt: skip
    return ct.TrainConfig.for_dataset("synthetic", **{**base, **kw})


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("segnet-mtan", {}),  # xtsc: TaskTransferNets on SegNet-MTAN
        ("segnet", {"consistency": "none", "weighting": "uncertainty"}),
        ("adamt-net", {"weighting": "pcgrad"}),
    ],
)
def test_every_architecture_trains_and_its_checkpoint_evaluates(synthetic_raw, tmp_path, arch, extra):
    run = tmp_path / arch
    result = ct.train(_cfg(synthetic_raw, arch=arch, **extra), run_dir=run)
    assert result.epochs_done == 1
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["model_config"]["arch"] == arch

    model = model_from_checkpoint(ckpt)
    assert model.config.arch == arch and model.config.has_transfer == (extra.get("consistency") != "none")
    r = run_cli("eval", "--ckpt", str(run / "checkpoints/last.pt"), "--batch-size", "2", "--no-energy",
                "--json", str(tmp_path / f"{arch}.json"))  # fmt: skip
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / f"{arch}.json").read_text())
    assert "miou" in json.dumps(scores)


def test_adamt_net_and_pretrained_options_are_checked(synthetic_raw):
    with pytest.raises(ConfigError, match="multiples of 16"):
        _cfg(synthetic_raw, arch="adamt-net", height=40)
    with pytest.raises(ConfigError, match="--pretrained starts a ResNet encoder"):
        _cfg(synthetic_raw, arch="segnet-mtan", pretrained=True)
    with pytest.raises(ConfigError, match="--arch must be one of"):
        _cfg(synthetic_raw, arch="vgg")


class FixedGramian(GramianWeighting):
    name = "fixed-gramian-test"

    def gramian_weights(self, gramian, values):
        return torch.tensor([0.25, 0.75], dtype=torch.float64)


@pytest.mark.parametrize("grad_space", ["features", "encoder"])
def test_gradient_weightings_weigh_mtans_shared_attention_blocks(grad_space):
    """SegNet-MTAN's attention blocks are shared but applied after the features the weightings see: they get the
    weighted gradient Σ w_t ∇L_t like the trunk, and each task's branch its own gradient."""
    torch.manual_seed(0)
    model = ct.build_model(arch="segnet-mtan", tasks=("seg", "depth"), transfer=False).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    method = FixedGramian(("seg", "depth"), grad_space=grad_space)
    method.attach(model)

    def losses():
        out = model(x)
        return {"seg": out.seg.square().mean(), "depth": (out.depth - 1).abs().mean()}

    model.train()
    expected = {}
    for w, task in ((0.25, "seg"), (0.75, "depth")):
        parts = losses()  # plain autograd (the gate hook only aliases the features)
        grads = torch.autograd.grad(parts[task], list(model.parameters()), allow_unused=True)
        for (name, _), g in zip(model.named_parameters(), grads, strict=True):
            if g is not None:
                expected[name] = expected.get(name, 0) + (w if not name.startswith(f"{task}_decoder") else 1.0) * g
    model.zero_grad()
    parts = losses()
    method.backward(sum(parts.values()), parts, model)
    got = dict(model.named_parameters())
    for name in ("encoder.encoder_block.0.0.weight", "shared_attention.encoder_block_att.2.0.weight",
                 "shared_attention.decoder_block_att.0.0.weight", "seg_decoder.encoder_att.1.0.weight",
                 "depth_decoder.head.1.weight"):  # fmt: skip
        assert got[name].grad is not None, name
        torch.testing.assert_close(got[name].grad, expected[name], rtol=1e-7, atol=1e-10, msg=name)


def _teacher(synthetic_raw, tmp_path, task, arch="segnet-mtan", **kw):
    run = tmp_path / f"teacher-{task}-{arch}"
    ct.train(_cfg(synthetic_raw, arch=arch, tasks=(task,), **kw), run_dir=run)
    return run / "checkpoints/last.pt"


def test_kd4mtl_trains_resumes_and_refuses_wrong_teachers(synthetic_raw, tmp_path):
    seg, depth = (_teacher(synthetic_raw, tmp_path, t) for t in ("seg", "depth"))
    teacher_bytes = seg.read_bytes()
    cfg = _cfg(synthetic_raw, arch="segnet-mtan", consistency="none", method="kd4mtl",
               teachers=(f"seg={seg}", f"depth={depth}"), epochs=2)  # fmt: skip
    ct.train(cfg.replace(epochs=1), run_dir=tmp_path / "stopped")
    ct.train(cfg, run_dir=tmp_path / "stopped", resume=True, resume_overrides={"epochs": 2})
    ct.train(cfg, run_dir=tmp_path / "straight")
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ad, bd = a["distillation"]["adaptors"], b["distillation"]["adaptors"]
    assert set(ad) == {"per_task.seg.0.weight", "per_task.seg.1.weight", "per_task.depth.0.weight",
                       "per_task.depth.1.weight"}  # fmt: skip
    assert ad["per_task.seg.0.weight"].shape == (512, 512, 1, 1) and ad["per_task.seg.1.weight"].shape[0] == 64
    assert all(torch.equal(ad[k], bd[k]) for k in ad)
    assert "distillation" not in torch.load(tmp_path / "straight/checkpoints/best.pt", weights_only=True)
    header = (tmp_path / "straight/metrics.csv").read_text().splitlines()[0]
    assert "train_distill" in header
    assert seg.read_bytes() == teacher_bytes  # teachers are read, never written

    with pytest.raises(ConfigError, match="give --teacher depth=CHECKPOINT"):
        cfg.replace(teachers=(f"seg={seg}",))
    with pytest.raises(ConfigError, match="add --method kd4mtl"):
        _cfg(synthetic_raw, teachers=(f"seg={seg}",))
    with pytest.raises(ConfigError, match="sets the gradients itself"):
        cfg.replace(weighting="pcgrad")
    swapped = cfg.replace(teachers=(f"seg={depth}", f"depth={seg}"))
    with pytest.raises(CheckpointError, match=r"--teacher seg=.*trained on depth, not seg alone"):
        ct.train(swapped, run_dir=tmp_path / "swapped")
    other = _teacher(synthetic_raw, tmp_path, "seg", arch="segnet")
    with pytest.raises(CheckpointError, match="its architecture is segnet, the student's segnet-mtan"):
        ct.train(cfg.replace(teachers=(f"seg={other}", f"depth={depth}")), run_dir=tmp_path / "other")


def test_distillation_is_the_normalised_feature_distance():
    from crosstask_cli.engine.distillation import normalised_distance

    a = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).repeat(2, 1, 2, 2)
    b = torch.tensor([-4.0, 3.0]).view(1, 2, 1, 1).repeat(2, 1, 2, 2)  # orthogonal: ‖â − b̂‖² = 2
    assert normalised_distance(a, b).item() == pytest.approx(2.0, rel=1e-6)
    assert normalised_distance(a, 2 * a).item() == pytest.approx(0.0, abs=1e-6)
    z = torch.zeros(1, 2, 1, 1)  # ε keeps a zero map finite
    assert torch.isfinite(normalised_distance(z, a))


def test_the_mtan_preset_sets_the_standard_protocol_under_the_given_options():
    c = ct.TrainConfig.for_dataset("nyu", preset="mtan")
    assert (c.model.arch, c.model.tasks, c.loss.consistency, c.optim.weighting) == (
        "segnet-mtan", ("seg", "depth", "normal"), "none", "fixed")  # fmt: skip
    assert (c.optim.lr, c.optim.betas, c.optim.epochs, c.optim.scheduler_step_size, c.optim.scheduler_gamma) == (
        1e-4, (0.9, 0.999), 200, 100, 0.5)  # fmt: skip
    assert (c.optim.batch_size, c.data.height, c.data.width, c.runtime.preset) == (2, 288, 384, "mtan")
    cs = ct.TrainConfig.for_dataset("cityscapes", preset="mtan", consistency="xtsc", batch_size=4)
    assert (cs.optim.batch_size, cs.data.height, cs.model.tasks, cs.loss.consistency) == (4, 128, ("seg", "depth"),
                                                                                          "xtsc")  # fmt: skip
    assert ct.TrainConfig.for_dataset("nyu", preset="mtan", tasks=("seg",)).loss.consistency == "none"
    with pytest.raises(ConfigError, match="--preset must be one of mtan"):
        ct.TrainConfig.for_dataset("nyu", preset="nash")


@pytest.mark.parametrize("name", ["original-table-cityscapes", "original-table-nyu", "standard-nyu3"])
def test_the_comparison_specs_load_with_their_teachers_and_protocol(name):
    from pathlib import Path

    from crosstask_cli.sweep import load_spec

    spec = load_spec(Path(__file__).parents[1] / "experiments" / f"{name}.toml")
    runs = {(r.variant, r.seed): r for r in spec.runs()}
    assert spec.seeds == [0, 1, 2]
    cfgs = {k: ct.TrainConfig.for_dataset(spec.dataset, **r.options) for k, r in runs.items()}
    if name == "standard-nyu3":
        from crosstask_cli.weighting import weighting_names

        assert set(weighting_names()) <= {v for v, _ in runs} and spec.eval_checkpoint == "last"
        assert all(c.model.arch == "segnet-mtan" and c.optim.epochs == 200 for c in cfgs.values())
        return
    kd = next(k for k in cfgs if k[0].startswith("kd4mtl") and k[1] == 2)
    teachers = dict(t.split("=", 1) for t in cfgs[kd].loss.teachers)
    assert teachers["seg"] == f"{spec.out}/mtan-seg-only/seed-2/checkpoints/best.pt"
    order = [v for v in spec.variants]
    assert order.index("mtan-seg-only") < order.index(kd[0])  # teachers train first
    assert cfgs[("ours", 0)].model.arch == "resnet" and cfgs[("ours", 0)].optim.weighting == "uncertainty"
    assert cfgs[("pcgrad" if name.endswith("cityscapes") else "pcgrad-2tasks", 0)].model.arch == "segnet-mtan"
    assert any(c.model.arch == "adamt-net" for c in cfgs.values())


def test_cli_train_reads_the_architecture_method_and_teacher_flags(synthetic_raw, tmp_path):
    r = run_cli("train", "synthetic", "--data", str(synthetic_raw), "--arch", "segnet", "--method", "kd4mtl",
                "--teacher", f"seg={tmp_path / 'seg.pt'}", "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert r.exit_code != 0 and "give --teacher depth=CHECKPOINT" in r.output
    r = run_cli("train", "synthetic", "--data", str(synthetic_raw), "--arch", "segnet", "--method", "kd4mtl",
                "--teacher", f"seg={tmp_path / 'seg.pt'}", "--teacher", f"depth={tmp_path / 'depth.pt'}",
                "--run-dir", str(tmp_path / "run"), "--height", "32", "--width", "64", "--workers", "0")  # fmt: skip
    assert r.exit_code != 0 and "seg.pt: no such checkpoint file" in r.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_finite_weights_stop_training_with_the_last_finite_checkpoint_intact(synthetic_raw, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    """A finite loss whose update makes a weight NaN: the run stops before that epoch's checkpoint, last.pt stays
    the previous epoch's, and eval/predict refuse a checkpoint with non-finite weights."""
    from crosstask_cli.engine.trainer import Trainer
    from crosstask_cli.errors import NonFiniteLossError

    cfg = _cfg(synthetic_raw, enc_layers=18, epochs=2)
    run = tmp_path / "run"
    ct.train(cfg.replace(epochs=1), run_dir=run)
    last = run / "checkpoints/last.pt"
    before = last.read_bytes()
    original = Trainer._train_step_local

    def poisoned(self, *args):
        out = original(self, *args)
        with torch.no_grad():
            next(self.model.parameters())[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "_train_step_local", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights after epoch 2 \(first: encoder\.conv1\.weight\)"
                       r".*last finite checkpoint is kept"):  # fmt: skip
        ct.train(cfg, run_dir=run, resume=True, resume_overrides={"epochs": 2})
    assert last.read_bytes() == before

    ckpt = torch.load(last, weights_only=True)
    ckpt["model"]["seg_decoder.head.weight"][0, 0, 0, 0] = float("inf")
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: its weights are not finite \(seg_decoder.head.weight"):
        model_from_checkpoint(torch.load(tmp_path / "bad.pt", weights_only=True), tmp_path / "bad.pt")
    r = run_cli("eval", "--ckpt", str(tmp_path / "bad.pt"), "--no-energy")
    assert r.exit_code != 0 and "weights are not finite" in r.output


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"betas": (1.0, 0.99)}, "--betas must be two numbers in"),
        ({"max_grad_norm": float("nan")}, "--max-grad-norm must be a finite number"),
        ({"betas": (0.9, float("nan"))}, "--betas must be two numbers in"),
        ({"seed": -1}, r"--seed must be an integer in \[0, 2\^32\)"),
        ({"seed": 2**40}, r"--seed must be an integer in \[0, 2\^32\)"),
        ({"max_val_batches": 0}, "--max-val-batches must be ≥ 1"),
        ({"lr": float("nan")}, "--lr must be positive"),
        ({"scheduler_gamma": float("nan")}, "--scheduler-gamma must be in"),
        ({"alpha": float("nan")}, "--alpha must be in"),
        ({"cagrad_c": float("nan")}, "--cagrad-c must be a finite number"),
        ({"famo_lr": float("nan")}, "--famo-lr must be a finite number"),
        ({"fairgrad_alpha": float("nan")}, "--fairgrad-alpha must be a finite number"),
        ({"dbmtl_beta_sigma": float("nan")}, "--dbmtl-beta-sigma must be a finite number"),
    ],
)
def test_out_of_range_and_non_finite_options_are_refused(synthetic_raw, kw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(synthetic_raw, **kw)


def test_ctrl_c_during_training_says_how_to_resume(synthetic_raw, tmp_path, monkeypatch):
    from crosstask_cli.engine.trainer import Trainer

    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_step", interrupt)
    run = tmp_path / "run"
    r = run_cli("train", "synthetic", "--data", str(synthetic_raw), "--run-dir", str(run), "--height", "32",
                "--width", "64", "--enc-layers", "18", "--workers", "0", "--epochs", "1")  # fmt: skip
    assert r.exit_code == 130
    text = " ".join(r.output.split())
    assert f"continue with: crosstask train synthetic --run-dir {run} --resume" in text


def test_output_files_inside_an_input_folder_are_refused(synthetic_prepared, tiny_run, tmp_path):
    """eval --json into the dataset, eval --sparsification-png over one of its arrays, compare --csv over the run's
    own log: one line each, and the inputs are untouched."""
    meta = (synthetic_prepared / "meta.json").read_bytes()
    log = (tiny_run / "metrics.csv").read_bytes()
    ckpt = tiny_run / "checkpoints/last.pt"
    for args in (["--json", synthetic_prepared / "meta.json"],
                 ["--sparsification-png", synthetic_prepared / "val" / "images.png"]):  # fmt: skip
        r = run_cli("eval", "--ckpt", ckpt, "--data", synthetic_prepared, *args)
        assert r.exit_code == 1 and "lies inside the input --data" in r.output, r.output
    r = run_cli("compare", tiny_run, "--csv", tiny_run / "metrics.csv")
    assert r.exit_code == 1 and "lies inside the input run 1" in r.output, r.output
    assert (synthetic_prepared / "meta.json").read_bytes() == meta and (tiny_run / "metrics.csv").read_bytes() == log
    assert not (synthetic_prepared / "val" / "images.png").exists()


def test_synthetic_scenes_are_rendered_only_into_the_default_folder(tmp_path, monkeypatch):
    from crosstask_cli.errors import DatasetError

    missing = tmp_path / "moved" / "synthetic"
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(missing), height=32, width=64, epochs=1, workers=0)
    with pytest.raises(DatasetError, match=r"moved/synthetic: dataset directory not found \(synthetic scenes are "
                       r"rendered only into the default folder"):  # fmt: skip
        ct.train(cfg, run_dir=tmp_path / "run")
    assert not missing.exists()
    with pytest.raises(ConfigError, match="--data is empty"):
        ct.TrainConfig.for_dataset("synthetic").with_assignments(["data.root= "])
    # the default folder is still rendered on a new run, never on a resumed one (checked without rendering it)
    from crosstask_cli.engine import trainer as trainer_module

    requests = []

    def record(request, *args, **kwargs):
        requests.append(request)
        return tmp_path

    monkeypatch.setattr(trainer_module, "prepare_training_data", record)
    default = ct.TrainConfig.for_dataset("synthetic")
    trainer_module.resolve_training_data(default)
    trainer_module.resolve_training_data(default, resuming=True)
    trainer_module.resolve_training_data(cfg)
    assert [r.generate for r in requests] == [True, False, False]


@pytest.mark.slow  # 15 methods × two 20-45 M-parameter networks: about a minute on 2 cores
@pytest.mark.parametrize("arch", ["segnet-mtan", "adamt-net"])
def test_every_weighting_gives_every_parameter_a_finite_gradient_with_three_tasks(arch):
    from crosstask_cli.tasks import task_loss_name
    from crosstask_cli.weighting import weighting_names

    torch.manual_seed(0)
    tasks = ("seg", "depth", "normal")
    model = ct.build_model(arch=arch, num_classes=7, tasks=tasks, transfer=False, input_size=(32, 32))
    loss_fn = ct.CrossTaskLoss(7, tasks=tasks, consistency="none")
    x = torch.randn(2, 3, 32, 32)
    targets = {"seg": torch.randint(0, 7, (2, 32, 32)), "depth": torch.rand(2, 1, 32, 32) + 0.1,
               "normal": torch.nn.functional.normalize(torch.randn(2, 3, 32, 32), dim=1)}  # fmt: skip
    for name in weighting_names():
        method = ct.build_weighting(name, tuple(task_loss_name(t) for t in tasks))
        handle = method.attach(model)
        model.zero_grad()
        losses = loss_fn(model(x), targets)
        task_losses = {k: losses[k] for k in method.tasks}
        method.backward(method.combine(task_losses, model), task_losses, model)
        if handle is not None:
            handle.remove()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{name}: {missing[:3]}"


def test_compare_names_each_numbers_file_and_split_and_warns_of_a_stale_eval(tiny_run, tmp_path):
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = run_cli("compare", run)
    split = torch.load(run / "checkpoints/last.pt", weights_only=True)["metrics"]["val_split"]
    assert r.exit_code == 0 and f"metrics.csv (epoch 1, {split} split)" in " ".join(r.output.split())
    r = run_cli("eval", "--ckpt", run / "checkpoints/best.pt", "--no-energy", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    shutil.copy(tmp_path / "e.json", run / "eval.json")
    old = (run / "checkpoints/best.pt").stat().st_mtime - 100
    os.utime(run / "eval.json", (old, old))  # evaluated before the checkpoint was (re)written
    r = run_cli("compare", run)
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "eval.json (val split)" in text
    assert "warning:" in text and "the run changed after it was evaluated" in text
