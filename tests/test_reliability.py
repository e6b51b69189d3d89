"""Crash safety, safe checkpoint loading and hostile inputs (the README's failure-behaviour table)."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import make_raw_cityscapes, run_cli, write_raw_sample

import crosstask_cli as ct
from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes
from crosstask_cli.data.prepared import DatasetError, PreparedWriter, open_split
from crosstask_cli.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from crosstask_cli.engine.trainer import NonFiniteLossError

TRAIN_ARGS = ["--height", "32", "--width", "64", "--enc-layers", "18", "--batch-size", "4", "--workers", "0",
              "--epochs", "3", "--max-steps-per-epoch", "3", "--save-every-steps", "1", "--device", "cpu"]  # fmt: skip


def _train_proc(run: Path, data: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "crosstask_cli",
        "train",
        "synthetic",
        "--data",
        str(data),
        "--run-dir",
        str(run),
        *TRAIN_ARGS,
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class CheckpointWatcher(threading.Thread):
    """Loads every checkpoint on disk over and over while training runs; records any failure."""

    def __init__(self, ckpt_dir: Path) -> None:
        super().__init__(daemon=True)
        self.ckpt_dir, self.failures, self.loads = ckpt_dir, [], 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name in ("last.pt", "best.pt"):
                path = self.ckpt_dir / name
                if path.exists():
                    try:
                        load_checkpoint(path)
                        self.loads += 1
                    except FileNotFoundError:
                        pass
                    except Exception as exc:  # noqa: BLE001
                        self.failures.append(f"{name}: {exc}")
            time.sleep(0.05)


@pytest.mark.integration
def test_sigkill_anywhere_loses_nothing_and_checkpoints_stay_loadable(synthetic_raw, tmp_path):
    ref = _train_proc(tmp_path / "ref", synthetic_raw)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]

    run = tmp_path / "killed"
    watcher = CheckpointWatcher(run / "checkpoints")
    watcher.start()
    rng = random.Random(7)
    last = run / "checkpoints" / "last.pt"
    kills, resume = 0, False
    for attempt in range(15):
        before = last.stat().st_mtime_ns if last.exists() else None
        proc = _train_proc(run, synthetic_raw, *(["--resume"] if resume else []))
        deadline = time.time() + 120
        if attempt == 1:  # aim at a checkpoint write: kill as soon as a temporary checkpoint file appears
            while proc.poll() is None and time.time() < deadline and not list((run / "checkpoints").glob(".*.tmp")):
                time.sleep(0.002)
        else:  # let this attempt make progress (a new last.pt), then kill at a random moment shortly after
            while (
                proc.poll() is None
                and time.time() < deadline
                and (not last.exists() or last.stat().st_mtime_ns == before)
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None and kills < 3:  # each process costs seconds of start-up: three kills, one aimed
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            resume = (run / "config.json").exists()
            continue
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
        break
    watcher.stop.set()
    watcher.join()
    assert kills >= 3
    assert not watcher.failures, watcher.failures[:3]
    assert watcher.loads > 0
    a = torch.load(tmp_path / "ref/checkpoints/last.pt", weights_only=True)
    b = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert b["epoch"] == a["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_mid_epoch_checkpoint_resumes_exactly(synthetic_raw, tmp_path):
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=1, enc_layers=18,
                                     batch_size=4, workers=0, max_steps_per_epoch=3, save_every_steps=1)  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "straight")

    from crosstask_cli.engine.trainer import TrainReporter

    class Interrupt(TrainReporter):
        def __init__(self):
            self.steps = 0

        def step(self, loss):
            self.steps += 1
            if self.steps == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ct.train(cfg, run_dir=tmp_path / "cut", reporter=Interrupt())
    partial = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert partial["epoch"] == 0 and partial["partial_epoch"]["batches"] == 1
    ct.train(cfg, run_dir=tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["metrics"]["train_seg"] == pytest.approx(b["metrics"]["train_seg"], rel=1e-6)


# --- non-finite losses ------------------------------------------------------------------------------------


def _poisonable(tmp_path: Path, synthetic_prepared: Path) -> Path:
    """A copy of the prepared set whose arrays we may modify."""
    import shutil

    dst = tmp_path / "prep"
    shutil.copytree(synthetic_prepared, dst)
    return dst


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_nonfinite_loss_stops_with_step_samples_and_component(synthetic_prepared, tmp_path):
    data = _poisonable(tmp_path, synthetic_prepared)
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(data), height=32, width=64, epochs=1, enc_layers=18,
                                     batch_size=4, workers=0)  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "run")
    good = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    depth = np.load(data / "train/depth.npy", mmap_mode="r+")
    # finite (so the data checks pass) but its loss overflows float32; the whole image, so no crop can drop it
    depth[5] = 3e38
    depth.flush()
    bad_id = open_split(data, "train").files[5]
    with pytest.raises(NonFiniteLossError) as err:
        ct.train(cfg, run_dir=tmp_path / "run", resume=True, resume_overrides={"epochs": 2})
    msg = str(err.value)
    assert "epoch 2" in msg and "step" in msg and "depth" in msg and bad_id in msg and "last good checkpoint" in msg
    kept = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert kept["epoch"] == 1 and all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])
    # stopped before the first checkpoint: the message does not point to one
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        ct.train(cfg, run_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh/checkpoints/last.pt").exists()
    # tolerated when asked: the bad batch is skipped and training finishes with finite weights
    cfg2 = cfg.replace(skip_nonfinite=1, epochs=1)
    result = ct.train(cfg2, run_dir=tmp_path / "tolerant")
    assert result.epochs_done == 1
    final = torch.load(tmp_path / "tolerant/checkpoints/last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())


# --- safe checkpoint loading --------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_and_runs_nothing(tmp_path, tiny_run):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "crosstask-checkpoint", "version": 1, "model": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    for args in (("info", evil), ("eval", "--ckpt", evil), ("predict", marker.parent / "evil.pt", "--ckpt", evil, "--out", tmp_path / "o"),
                 ("export", "--ckpt", evil, "--onnx", tmp_path / "m.onnx")):  # fmt: skip
        r = run_cli(*args)
        assert r.exit_code == 1 and "refused" in r.output, args
    assert not marker.exists()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p, real: p.write_bytes(b""), "empty file"),
        (lambda p, real: p.write_bytes(real.read_bytes()[: real.stat().st_size // 3]), "truncated or corrupt"),
        (lambda p, real: torch.save({"state_dict": {}}, p), "not a crosstask checkpoint"),
        (lambda p, real: torch.save({"format": "crosstask-checkpoint", "version": 99}, p), "newer than this crosstask"),
        (lambda p, real: p.write_text("hello"), "not a PyTorch checkpoint file"),
        (lambda p, real: p.write_text('{"model": {}}'), "not a PyTorch checkpoint file"),  # e.g. a config.json
        (lambda p, real: p.mkdir(), "is a directory"),
    ],
)
def test_bad_checkpoint_files_get_clear_errors(tmp_path, tiny_run, make, match):
    path = tmp_path / "bad.pt"
    make(path, tiny_run / "checkpoints/best.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    r = run_cli("info", path)
    assert r.exit_code == 1 and "Traceback" not in r.output


# --- hostile data and environment ---------------------------------------------------------------------------


def test_images_of_different_sizes_in_one_split_are_resized(tmp_path):
    src = make_raw_cityscapes(tmp_path / "raw")
    rng = np.random.default_rng(0)
    big = (np.arange(64 * 96).reshape(64, 96) % 34).astype(np.uint8)
    write_raw_sample(src, "train", "aachen", "aachen_000009_000019", rng.integers(0, 255, (64, 96, 3), dtype=np.uint8),
                     big, np.full((64, 96), 3000, np.uint16))  # fmt: skip
    out = prepare_cityscapes(src, tmp_path / "out", PrepareOptions(4, 34, 7))
    assert open_split(out, "train").images.shape == (3, 4, 34, 3)


@pytest.mark.parametrize(
    "target,writer,match",
    [
        ("gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", lambda p: p.write_bytes(b""), "empty or missing label"),
        ("gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
         lambda p: cv2.imwrite(str(p), np.zeros((4, 34, 3), np.uint8)), "channels, expected one"),
        ("disparity/train/aachen/aachen_000000_000019_disparity.png",
         lambda p: cv2.imwrite(str(p), np.zeros((4, 34), np.uint8)), "expected uint16"),
        ("disparity/train/aachen/aachen_000000_000019_disparity.png",
         lambda p: cv2.imwrite(str(p), np.zeros((5, 34), np.uint16)), "differ in size"),
    ],
)  # fmt: skip
def test_unexpected_png_bit_depth_channels_and_sizes(tmp_path, target, writer, match):
    src = make_raw_cityscapes(tmp_path / "raw")
    writer(src / target)
    with pytest.raises(DatasetError, match=match):
        prepare_cityscapes(src, tmp_path / "out", PrepareOptions(4, 34, 7))
    assert not (tmp_path / "out").exists()


def test_output_folder_without_write_permission(tmp_path, monkeypatch):
    """Simulated (tests run as root, where permission bits do not stop writes): mkdtemp fails as the OS would."""
    import tempfile

    src = make_raw_cityscapes(tmp_path / "raw")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    r = run_cli(
        "prepare", "cityscapes", "--src", src, "--out", tmp_path / "ro" / "out", "--height", "8", "--width", "34"
    )
    assert r.exit_code == 1 and "permission denied" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "ro" / "out").exists()


def test_full_disk_while_preparing_leaves_nothing(tmp_path, monkeypatch):
    src = make_raw_cityscapes(tmp_path / "raw")
    real = PreparedWriter.finish_split
    calls = []

    def full(self, split, files):
        calls.append(split)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, split, files)

    monkeypatch.setattr(PreparedWriter, "finish_split", full)
    with pytest.raises(OSError, match="no space left on device while preparing; nothing was written"):
        prepare_cityscapes(src, tmp_path / "out", PrepareOptions(4, 34, 7))
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, tiny_run):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_config": {}, "dataset": {}, "model": {"w": torch.ones(3)}})

    def full(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="last.pt: no space left on device; the previous file is unchanged"):
        save_checkpoint(path, {"model_config": {}, "dataset": {}, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_dataset_path_that_is_a_file(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("x")
    r = run_cli("prepare", "cityscapes", "--src", f, "--out", tmp_path / "out")
    assert r.exit_code == 1 and "is a file" in r.output
    r = run_cli("train", "cityscapes", "--data", f, "--run-dir", tmp_path / "r", "--height", "32", "--width", "64")
    assert r.exit_code == 1 and "is a file" in r.output


def test_prepare_cli_bad_inputs(tmp_path):
    r = run_cli("prepare", "cityscapes", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "missing --src" in r.output
    (tmp_path / "empty").mkdir()
    r = run_cli("prepare", "nyu", "--src", tmp_path / "empty", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "matches no known dataset layout" in r.output and "Traceback" not in r.output
    src = make_raw_cityscapes(tmp_path / "raw")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "mine").write_text("keep")
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", tmp_path / "exists", "--height", "8", "--width", "34")
    assert r.exit_code == 1 and "--force" in r.output and (tmp_path / "exists" / "mine").exists()
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", tmp_path / "ok", "--height", "8", "--width", "34")
    assert r.exit_code == 0 and "prepared" in r.output
    r = run_cli(
        "prepare",
        "synthetic",
        "--out",
        tmp_path / "syn",
        "--train",
        "2",
        "--val",
        "1",
        "--height",
        "32",
        "--width",
        "64",
    )
    assert r.exit_code == 0 and (tmp_path / "syn" / "leftImg8bit").is_dir()


def test_a_kill_between_checkpoint_and_log_loses_no_row(synthetic_prepared, tmp_path):
    """last.pt is written before metrics.csv: a process killed between the two leaves a log without the
    checkpoint's epoch. Resuming takes that row from the checkpoint, so the log stays one row per epoch."""
    import crosstask_cli as ct

    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_prepared), height=32, width=64, epochs=2,
                                     enc_layers=18, batch_size=4, workers=0, max_steps_per_epoch=1, max_val_batches=1)  # fmt: skip
    run = tmp_path / "run"
    ct.train(cfg, run_dir=run)
    log = run / "metrics.csv"
    rows = log.read_text().splitlines()
    log.write_text("\n".join(rows[:-1]) + "\n")  # as if killed after last.pt (epoch 2), before the log's epoch 2
    ct.train(cfg, run_dir=run, resume=True, resume_overrides={"epochs": 3})
    after = log.read_text().splitlines()
    assert [r.split(",")[0] for r in after[1:]] == ["1", "2", "3"]
    assert after[2] == rows[2]  # epoch 2's row, as it was written before
