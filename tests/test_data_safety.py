"""Never lose a user's data, never report a wrong number silently: the cases of the data-safety issue, one test
(or one parametrised case) each. Disk-full cases run for real in a small tmpfs where this machine lets an
unprivileged user namespace mount one, and by simulation everywhere."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import crosstask_cli as ct
from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes, resolve_data
from crosstask_cli.data.prepared import SAMPLE_CHECKS, PreparedWriter, open_split, read_meta
from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from crosstask_cli.engine.evaluator import evaluate_predictions
from crosstask_cli.engine.rundir import LOCK, RunLock
from crosstask_cli.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    InputError,
    NonFiniteLossError,
    RunDirError,
)
from tests.helpers import TINY, make_raw_cityscapes, run_cli, write_raw_sample

TINY_TRAIN = dict(height=32, width=64, epochs=1, enc_layers=18, batch_size=4, workers=0, max_steps_per_epoch=1)


def one_line_error(r, *fragments: str) -> None:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    for f in fragments:
        assert f in r.output, (f, r.output)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name or ".tmp" in p.name)


def tiny_prepared(root: Path, n_train: int = 4, n_val: int = 2, class_names: list[str] | None = None) -> Path:
    """A prepared synthetic-style dataset at 32×64, 7 classes, valid values everywhere."""
    from crosstask_cli.data.labels import class_info

    names, palette = class_info("synthetic", 7)
    rng = np.random.default_rng(0)
    with PreparedWriter(root) as w:
        for split, n in (("train", n_train), ("val", n_val)):
            a = w.new_split(split, n, 32, 64)
            a["images"][:] = rng.integers(0, 256, a["images"].shape, dtype=np.uint8)
            a["labels"][:] = rng.integers(0, 7, a["labels"].shape, dtype=np.uint8)
            a["depth"][:] = rng.uniform(0.01, 0.3, a["depth"].shape).astype(np.float32)
            w.finish_split(split, [f"{split}_{i:03d}" for i in range(n)])
        w.write_meta({"dataset": "synthetic", "num_classes": 7, "class_names": class_names or list(names),
                      "palette": [list(c) for c in palette], "ignore_index": 255, "height": 32, "width": 64,
                      "depth": {"kind": "inverse", "unit": "", "max": 0.5}})  # fmt: skip
    return root


# --- 1. --force replaces only what crosstask made, never an input ------------------------------------------


def test_prepare_force_refuses_a_folder_crosstask_did_not_make(tmp_path):
    src = make_raw_cityscapes(tmp_path / "raw")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", mine, "--force", "--height", "8", "--width", "34")
    one_line_error(r, "not a prepared dataset made by crosstask", "--force replaces only what crosstask made")
    assert (mine / "thesis.tex").read_text() == "years of work" and leftovers(tmp_path) == []


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("where", ["parent", "itself", "dot"])
def test_prepare_refuses_an_output_that_is_or_holds_the_source(tmp_path, monkeypatch, where, force):
    src = make_raw_cityscapes(tmp_path / "data" / "raw")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    out = {"parent": tmp_path / "data", "itself": src, "dot": Path(".")}[where]
    monkeypatch.chdir(tmp_path / "data")
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", out, "--height", "8", "--width", "34",
                *(["--force"] if force else []))  # fmt: skip
    one_line_error(r, "the input --src", "never writes over its inputs")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # nothing deleted, no temp


def test_prepare_into_the_empty_working_directory_keeps_that_folder(tmp_path, monkeypatch):
    src = make_raw_cityscapes(tmp_path / "raw")
    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    monkeypatch.chdir(here)
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", ".", "--height", "8", "--width", "34")
    assert r.exit_code == 0, r.output
    assert here.stat().st_ino == inode and read_meta(Path(".")).splits == {"train": 2, "val": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "raw"]


def test_prepare_force_replaces_its_own_dataset(tmp_path):
    src = make_raw_cityscapes(tmp_path / "raw")
    out = tmp_path / "prepared"
    assert run_cli("prepare", "cityscapes", "--src", src, "--out", out, "--height", "8", "--width", "34").exit_code == 0
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", out, "--height", "8", "--width", "34",
                "--num-classes", "19", "--force")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert read_meta(out).num_classes == 19 and leftovers(tmp_path) == []


def test_train_refuses_a_run_dir_that_is_or_holds_the_data(tmp_path):
    data = tiny_prepared(tmp_path / "work" / "prep")
    files = sorted(p.name for p in data.rglob("*"))
    for run_dir in (data, tmp_path / "work"):
        r = run_cli("train", "synthetic", "--data", data, "--run-dir", run_dir, "--force", *TINY)
        one_line_error(r, "the input --data", "never writes over its inputs")
    assert sorted(p.name for p in data.rglob("*")) == files and read_meta(data).splits == {"train": 4, "val": 2}


def test_train_force_refuses_a_folder_that_is_not_a_run(tmp_path):
    data = tiny_prepared(tmp_path / "prep")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    r = run_cli("train", "synthetic", "--data", data, "--run-dir", notes, "--force", *TINY)
    one_line_error(r, "not a crosstask run directory", "--force replaces only a run crosstask made")
    assert (notes / "todo.txt").read_text() == "keep me"


def test_predict_force_writes_only_into_a_predictions_folder(tmp_path, tiny_run, synthetic_raw):
    image = next((synthetic_raw / "leftImg8bit" / "val").rglob("*.png"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    r = run_cli("predict", image, "--ckpt", tiny_run / "checkpoints/best.pt", "--out", other, "--force")
    one_line_error(r, "not a predictions folder made by crosstask")
    r = run_cli("predict", image, "--ckpt", tiny_run / "checkpoints/best.pt", "--out", tiny_run, "--force")
    one_line_error(r, "contains the input --ckpt")
    preds = tmp_path / "preds"
    assert run_cli("predict", image, "--ckpt", tiny_run / "checkpoints/best.pt", "--out", preds).exit_code == 0
    r = run_cli("predict", image, "--ckpt", tiny_run / "checkpoints/best.pt", "--out", preds, "--force")
    assert r.exit_code == 0, r.output


# --- 2. a run directory is locked while a process trains in it --------------------------------------------


def test_a_locked_run_dir_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    data = tiny_prepared(tmp_path / "prep")
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom crosstask_cli.engine.rundir import RunLock\n"
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = ct.TrainConfig.for_dataset("synthetic", data=str(data), **TINY_TRAIN)
        with pytest.raises(RunDirError, match=f"in use: another training \\(PID {holder.pid}\\)"):
            ct.train(cfg, run_dir=run)
        with pytest.raises(RunDirError, match=f"PID {holder.pid}"):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK).is_file()  # left behind by the killed process: stale
    lock = RunLock(run).acquire()
    assert lock.stale_pid == holder.pid
    lock.release()
    result = ct.train(cfg, run_dir=run)
    assert result.epochs_done == 1 and not (run / LOCK).exists()
    assert (run / "checkpoints" / "last.pt").is_file()


def test_two_trainings_into_one_run_dir_cannot_mix(tmp_path):
    """While one training holds the run directory, a second one (even with --force or --resume) is refused and
    writes nothing there."""
    data = tiny_prepared(tmp_path / "prep")
    run = tmp_path / "run"
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(data), **TINY_TRAIN)
    ct.train(cfg, run_dir=run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with RunLock(run):  # as a running training holds it
        for kwargs in ({"force": True}, {"resume": True, "resume_overrides": {"epochs": 2}}):
            with pytest.raises(RunDirError, match="in use"):
                ct.train(cfg, run_dir=run, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


# --- 3. full disks ----------------------------------------------------------------------------------------


def _small_tmpfs_available() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _small_tmpfs_available(), reason="cannot mount a small tmpfs here")


def run_on_small_disk(disk: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run Python ``script`` (with DISK bound to ``disk``) where ``disk`` is a fresh tmpfs of ``size``."""
    disk.mkdir(exist_ok=True)
    code = f"from pathlib import Path\nDISK = Path({str(disk)!r})\n" + textwrap.dedent(script)
    cmd = f'mount -t tmpfs -o size={size} tmpfs "{disk}" && exec "{sys.executable}" -c "$0"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", cmd, code],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300,
    )  # fmt: skip


@needs_tmpfs
def test_prepare_on_a_full_disk_ends_with_one_line_and_leaves_nothing(tmp_path):
    src = make_raw_cityscapes(tmp_path / "raw", n_train=3)
    p = run_on_small_disk(
        tmp_path / "disk",
        "2m",
        f"""
        import subprocess, sys
        r = subprocess.run([sys.executable, "-m", "crosstask_cli", "prepare", "cityscapes", "--src", {str(src)!r},
                            "--out", str(DISK / "ds"), "--height", "256", "--width", "512"], capture_output=True, text=True)
        print("RC", r.returncode)
        print("ERR", r.stderr.strip())
        print("LEFT", sorted(p.name for p in DISK.iterdir()))
    """,
    )
    assert p.returncode == 0, p.stderr
    assert "RC 1" in p.stdout and "LEFT []" in p.stdout, p.stdout
    assert "needs about" in p.stdout and "MiB are free" in p.stdout and "Traceback" not in p.stdout


@needs_tmpfs
def test_memory_mapped_writes_never_meet_a_full_disk(tmp_path):
    """Past the upfront estimate (forced to pass here), the arrays are allocated before they are mapped: ENOSPC, not
    SIGBUS, and the temporary folder is removed."""
    src = make_raw_cityscapes(tmp_path / "raw", n_train=3)
    p = run_on_small_disk(
        tmp_path / "disk",
        "2m",
        f"""
        import shutil
        from collections import namedtuple
        import crosstask_cli.data.prepared as prepared
        from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes
        Usage = namedtuple("Usage", "total used free")
        prepared.shutil.disk_usage = lambda path: Usage(2**40, 0, 2**40)  # the estimate is fooled
        try:
            prepare_cityscapes({str(src)!r}, DISK / "ds", PrepareOptions(256, 512, 7))
        except OSError as exc:
            print("ERRNO", exc.errno, "MSG", exc)
        print("LEFT", sorted(p.name for p in DISK.iterdir()))
    """,
    )
    assert p.returncode == 0, (p.returncode, p.stderr)  # -7 would be SIGBUS
    assert f"ERRNO {errno.ENOSPC}" in p.stdout and "nothing was written" in p.stdout, p.stdout
    assert "LEFT []" in p.stdout, p.stdout


@needs_tmpfs
def test_checkpoint_on_a_full_disk_names_the_file_and_the_cause(tmp_path):
    p = run_on_small_disk(
        tmp_path / "disk",
        "1m",
        """
        import torch
        from crosstask_cli.engine.checkpoint import save_checkpoint
        try:
            save_checkpoint(DISK / "last.pt", {"model_config": {}, "dataset": {}, "model": {"w": torch.zeros(10**6)}})
        except OSError as exc:
            print("MSG", exc)
        print("LEFT", sorted(p.name for p in DISK.iterdir()))
    """,
    )
    assert p.returncode == 0, p.stderr
    assert f"cannot write {tmp_path / 'disk' / 'last.pt'}: no space left on device; nothing was written" in p.stdout
    assert "LEFT []" in p.stdout and "enforce fail" not in p.stdout, p.stdout


def test_prepare_refuses_up_front_when_the_disk_is_too_small(tmp_path, monkeypatch):
    from collections import namedtuple

    import crosstask_cli.data.prepared as prepared

    src = make_raw_cityscapes(tmp_path / "raw")
    usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(prepared.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", tmp_path / "out", "--height", "64", "--width", "128")
    one_line_error(r, "needs about", "MiB are free", "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_allocation_failure_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    src = make_raw_cityscapes(tmp_path / "raw")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="no space left on device while preparing; nothing was written"):
        prepare_cityscapes(src, tmp_path / "out", PrepareOptions(4, 34, 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_checkpoint_write_errors_name_the_file_and_cause(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"

    def torch_save_on_full_disk(obj, f):  # what torch.save does: a RuntimeError raised while handling ENOSPC
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", torch_save_on_full_disk)
    with pytest.raises(OSError, match=r"cannot write .*last\.pt: no space left on device; nothing was written"):
        save_checkpoint(path, {"model_config": {}, "dataset": {}, "model": {}})
    monkeypatch.undo()
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match=r"cannot write .*last\.pt: Permission denied"):
        save_checkpoint(path, {"model_config": {}, "dataset": {}, "model": {}})


# --- 4. prepared data is validated when opened --------------------------------------------------------------


def _poison(data: Path, array: str, value, index: int = 1, dtype=None) -> None:
    path = data / "train" / f"{array}.npy"
    arr = np.load(path)
    if dtype is not None:
        arr = arr.astype(dtype) / 255.0
    else:
        arr[index] = value
    np.save(path, arr)


@pytest.mark.parametrize(
    ("array", "value", "dtype", "match"),
    [
        ("images", None, np.float32, r"images\.npy: dtype float32, the prepared format stores uint8"),
        ("labels", 9, None, r"labels\.npy: sample 1 \(train_001\) holds class id\(s\) \[9\], expected 0\.\.6 or 255"),
        ("depth", np.nan, None, r"depth\.npy: sample 1 \(train_001\) holds NaN"),
        ("depth", np.inf, None, r"depth\.npy: sample 1 \(train_001\) holds inf"),
        ("depth", -1.0, None, r"depth\.npy: sample 1 \(train_001\) holds negative values"),
    ],
)
def test_bad_prepared_values_are_one_line_naming_the_file(tmp_path, array, value, dtype, match):
    data = tiny_prepared(tmp_path / "prep")
    _poison(data, array, value, dtype=dtype)
    with pytest.raises(DatasetError, match=match):
        ct.PreparedDataset(data, "train")
    r = run_cli("train", "synthetic", "--data", data, "--run-dir", tmp_path / "run", *TINY)
    one_line_error(r, f"{array}.npy")
    assert not (tmp_path / "run").exists()


def test_meta_and_files_list_are_checked(tmp_path):
    data = tiny_prepared(tmp_path / "prep")
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "splits"}))
    with pytest.raises(DatasetError, match=r"meta\.json: incomplete dataset description \(missing splits\)"):
        open_split(data, "train")
    (data / "meta.json").write_text(json.dumps({**meta, "num_classes": "seven"}))
    with pytest.raises(DatasetError, match="wrong type"):
        open_split(data, "train")
    (data / "meta.json").write_text(json.dumps(meta))
    (data / "train" / "files.txt").write_text("a\nb\nc\n")
    with pytest.raises(DatasetError, match=r"files\.txt: 3 lines, expected 4"):
        open_split(data, "train")


def test_verify_checks_every_value_the_default_sample_does_not(tmp_path, tiny_run):
    n = SAMPLE_CHECKS * 2
    data = tiny_prepared(tmp_path / "prep", n_train=4, n_val=n)
    sampled = set(np.linspace(0, n - 1, SAMPLE_CHECKS).round().astype(int).tolist())
    hidden = next(i for i in range(n) if i not in sampled)
    depth = np.load(data / "val" / "depth.npy")
    depth[hidden, 3, 3] = np.inf
    np.save(data / "val" / "depth.npy", depth)
    ct.PreparedDataset(data, "val")  # the cheap default does not read that sample
    with pytest.raises(DatasetError, match=f"sample {hidden} \\(val_{hidden:03d}\\) holds inf"):
        ct.PreparedDataset(data, "val", verify=True)
    r = run_cli("eval", "--ckpt", tiny_run / "checkpoints/best.pt", "--data", data, "--verify")
    one_line_error(r, "depth.npy", "holds inf")


# --- 5. raw-data cache, class names, file names ---------------------------------------------------------------


def test_raw_cache_is_rebuilt_when_the_sources_change(tmp_path):
    src = make_raw_cityscapes(tmp_path / "raw", n_train=2, n_val=1)
    cache = resolve_data("cityscapes", src, 8, 34, 7)
    assert read_meta(cache).splits["val"] == 1
    rng = np.random.default_rng(3)
    for i in (1, 2, 3):
        write_raw_sample(src, "val", "bonn", f"bonn_{i:06d}_000019", rng.integers(0, 255, (4, 34, 3), dtype=np.uint8),
                         np.full((4, 34), 7, np.uint8), np.full((4, 34), 900, np.uint16))  # fmt: skip
    messages = []
    again = resolve_data("cityscapes", src, 8, 34, 7, message=messages.append)
    assert again == cache and read_meta(cache).splits["val"] == 4
    assert messages and "changed since" in messages[0]
    # unchanged sources: the cache is reused as it is, whatever else is kept beside them (a run directory)
    stamp = (cache / "meta.json").stat().st_mtime_ns
    (src / "runs" / "r1").mkdir(parents=True)
    (src / "runs" / "r1" / "metrics.csv").write_text("epoch\n1\n")
    assert resolve_data("cityscapes", src, 8, 34, 7) == cache and (cache / "meta.json").stat().st_mtime_ns == stamp
    # an edited file (same name) also counts
    label = src / "gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    resolve_data("cityscapes", src, 8, 34, 7)
    assert (cache / "meta.json").stat().st_mtime_ns != stamp


def test_class_names_are_checked_not_only_their_count(tmp_path, tiny_run):
    data = tiny_prepared(tmp_path / "prep", class_names=["a", "b", "c", "d", "e", "f", "g"])
    r = run_cli("eval", "--ckpt", tiny_run / "checkpoints/best.pt", "--data", data)
    one_line_error(r, "the dataset's classes differ from the model's", "class 0 is 'a' in the dataset")


def test_file_names_the_format_cannot_store_are_refused_at_prepare(tmp_path):
    src = make_raw_cityscapes(tmp_path / "raw")
    rng = np.random.default_rng(0)
    write_raw_sample(src, "train", "aachen", "aachen_000009\nx_000019", rng.integers(0, 255, (4, 34, 3), dtype=np.uint8),
                     np.full((4, 34), 7, np.uint8), np.full((4, 34), 900, np.uint16))  # fmt: skip
    r = run_cli("prepare", "cityscapes", "--src", src, "--out", tmp_path / "out", "--height", "8", "--width", "34")
    one_line_error(
        r, "x_000019_leftImg8bit.png': the file name 'aachen_000009\\nx_000019'", "cannot be stored", "rename"
    )
    assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# --- 6. eval --predictions and JSON -----------------------------------------------------------------------------


def _predictions(folder: Path, data: Path, seg_value: int = 0, depth_value: float = 0.1) -> Path:
    import cv2

    folder.mkdir()
    for sid in open_split(data, "val").files:
        cv2.imwrite(str(folder / f"{sid}_seg.png"), np.full((32, 64), seg_value, np.uint8))
        np.save(folder / f"{sid}_depth.npy", np.full((32, 64), depth_value, np.float32))
    return folder


@pytest.mark.parametrize("depth", [np.nan, np.inf])
def test_eval_predictions_refuses_non_finite_depth(tmp_path, depth):
    data = tiny_prepared(tmp_path / "prep")
    preds = _predictions(tmp_path / "preds", data, 1, depth)
    with pytest.raises(InputError, match=r"val_000_depth\.npy: 2048 depth value\(s\) are NaN or infinite"):
        evaluate_predictions(preds, data)
    r = run_cli("eval", "--predictions", preds, "--data", data)
    one_line_error(r, "NaN or infinite")


@pytest.mark.parametrize("seg", [7, 255])
def test_eval_predictions_counts_ids_outside_the_classes_as_misses(tmp_path, seg):
    """As the official Cityscapes evaluator: a pixel predicted as no class is wrong for its target and a false
    positive of no class, so every IoU is 0 and the pixel accuracy is 0 (not clamped to the last class)."""
    data = tiny_prepared(tmp_path / "prep")
    preds = _predictions(tmp_path / "preds", data, seg)
    res = evaluate_predictions(preds, data)
    labels = np.asarray(open_split(data, "val").labels)
    assert res.segmentation["missed_pixels"] == int((labels != 255).sum())
    assert res.segmentation["pixel_acc"] == 0.0
    present = {int(c) for c in np.unique(labels) if c != 255}
    for c, (name, iou) in enumerate(res.segmentation["per_class_iou"].items()):
        assert (iou == 0.0) if c in present else np.isnan(iou), name


def test_eval_json_is_strict_json(tmp_path):
    """A depth-only model has no segmentation scores: they are null, never NaN (which is not JSON)."""
    data = tiny_prepared(tmp_path / "prep")
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(data), tasks=("depth",), select_metric="abs_err",
                                     **TINY_TRAIN)  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "run")
    out = tmp_path / "eval.json"
    r = run_cli("eval", "--ckpt", tmp_path / "run/checkpoints/best.pt", "--data", data, "--json", out)
    assert r.exit_code == 0, r.output

    def reject(constant: str):
        raise AssertionError(f"{constant} in the JSON")

    doc = json.loads(out.read_text(), parse_constant=reject)
    assert doc["segmentation"]["miou"] is None and isinstance(doc["depth"]["abs_err"], float)
    assert "not finite, written as null: segmentation.miou" in r.output


def test_finite_json_replaces_every_non_finite_number():
    from crosstask_cli.atomic import finite_json

    clean, replaced = finite_json({"a": float("inf"), "b": [1.0, float("nan")], "c": {"d": -float("inf"), "e": 2}})
    assert clean == {"a": None, "b": [1.0, None], "c": {"d": None, "e": 2}}
    assert replaced == ["a", "b[1]", "c.d"]


# --- 7. outputs checked before the work; one line for contradictions and malformed inputs ----------------------


def test_output_paths_are_checked_before_any_work(tmp_path, tiny_run, synthetic_prepared, monkeypatch):
    import crosstask_cli.engine.evaluator as evaluator

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(evaluator, "evaluate", no_work)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    ckpt = tiny_run / "checkpoints/best.pt"
    one_line_error(run_cli("eval", "--ckpt", ckpt, "--json", folder), "--json", "is a folder")
    one_line_error(run_cli("eval", "--ckpt", ckpt, "--json", ckpt), "is the input --ckpt")
    one_line_error(run_cli("compare", tiny_run, "--markdown", folder), "--markdown", "is a folder")
    one_line_error(run_cli("compare", tiny_run, "--csv", folder), "--csv", "is a folder")
    one_line_error(run_cli("export", "--ckpt", ckpt, "--onnx", folder), "--onnx", "is a folder")
    one_line_error(run_cli("bench", "--json", folder, "--part", "metrics"), "--json", "is a folder")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    one_line_error(run_cli("eval", "--ckpt", ckpt, "--json", blocker / "r.json"), "is a file, not a folder")
    one_line_error(run_cli("visualize", "curves", tiny_run, "--out", blocker), "is a file, expected a folder")
    one_line_error(
        run_cli("visualize", "samples", "--data", synthetic_prepared, "--out", blocker / "s.png"), "is a file"
    )


@pytest.mark.parametrize("args", [["--height", "0"], ["--width", "30"], ["--height", "-8"]])
def test_bench_bad_sizes_are_one_line(args):
    one_line_error(run_cli("bench", "--part", "model", *args), "must be a positive multiple of 8")


def test_contradictory_options_are_refused(tmp_path, tiny_run, synthetic_raw):
    data = tiny_prepared(tmp_path / "prep")
    r = run_cli("train", "synthetic", "--data", data, "--run-dir", tmp_path / "r", "--tasks", "seg",
                "--consistency", "xtc", *TINY)  # fmt: skip
    one_line_error(r, "--consistency xtc needs two tasks or more")
    with pytest.raises(ConfigError, match="needs two tasks or more"):
        ct.TrainConfig.for_dataset("synthetic", tasks=("depth",), consistency="xtsc")
    assert ct.TrainConfig.for_dataset("synthetic", tasks=("seg",)).loss.consistency == "none"  # default, not asked
    r = run_cli("train", "synthetic", "--run-dir", tmp_path / "r", "--resume", "--force")
    one_line_error(r, "give one of them")
    # --transfer on a model without TaskTransferNets
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(data), tasks=("seg",), select_metric="miou", **TINY_TRAIN)
    ct.train(cfg, run_dir=tmp_path / "seg")
    image = next((synthetic_raw / "leftImg8bit" / "val").rglob("*.png"))
    r = run_cli("predict", image, "--ckpt", tmp_path / "seg/checkpoints/best.pt", "--out", tmp_path / "p",
                "--transfer")  # fmt: skip
    one_line_error(r, "--transfer", "has no TaskTransferNets", "--tasks seg")
    assert not (tmp_path / "p").exists()
    # options that would change nothing
    ckpt = tiny_run / "checkpoints/best.pt"
    one_line_error(run_cli("predict", image, "--ckpt", ckpt, "--out", tmp_path / "p", "-r"), "every input is a file")
    one_line_error(run_cli("eval", "--predictions", tmp_path, "--data", data, "--device", "cpu"), "apply to evaluating")
    r = run_cli("visualize", "samples", "--data", data, "--height", "64", "--out", tmp_path / "s.png")
    one_line_error(r, "the prepared dataset")
    r = run_cli(
        "visualize", "samples", "--data", synthetic_raw, "--ckpt", ckpt, "--width", "64", "--out", tmp_path / "s.png"
    )
    one_line_error(r, "the checkpoint")
    assert not (tmp_path / "p").exists() and not (tmp_path / "s.png").exists()


def test_unsupported_files_in_a_folder_are_listed_not_ignored(tmp_path, tiny_run, synthetic_raw):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(next((synthetic_raw / "leftImg8bit" / "val").rglob("*.png")), folder / "a.png")
    Image.new("RGB", (64, 32), (10, 20, 30)).save(folder / "b.gif")
    (folder / ".DS_Store").write_bytes(b"\0")
    r = run_cli("predict", folder, "--ckpt", tiny_run / "checkpoints/best.pt", "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "b.gif" in r.output and "not a supported image type" in r.output
    assert ".DS_Store" not in r.output and "predicted 1 image(s)" in r.output


def test_a_checkpoint_whose_weights_disagree_with_its_header_is_one_line(tmp_path, tiny_run):
    c = load_checkpoint(tiny_run / "checkpoints/best.pt")
    c["model_config"] = {**c["model_config"], "enc_layers": 34}
    bad = tmp_path / "bad.pt"
    torch.save(c, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: its weights do not match its model description \(.*missing"):
        model_from_checkpoint(load_checkpoint(bad), bad)
    r = run_cli("eval", "--ckpt", bad)
    one_line_error(r, "its weights do not match its model description")
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_nonfinite_loss_before_any_checkpoint_points_to_no_checkpoint(tmp_path):
    data = tiny_prepared(tmp_path / "prep")
    depth = np.load(data / "train" / "depth.npy")
    depth[:] = 3e38  # finite, so the data checks pass, but the depth loss overflows float32
    np.save(data / "train" / "depth.npy", depth)
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(data), **TINY_TRAIN)
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet") as err:
        ct.train(cfg, run_dir=tmp_path / "run")
    assert "last good checkpoint" not in str(err.value) and "--verify" in str(err.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b\n1,2\n", "no valid 'epoch' column"),
        ("epoch,val_miou\nabc,1\n", "no valid 'epoch' column"),
        ("epoch,val_miou\n1,xyz\n", "epoch 1: a value is not a number"),
    ],
)
def test_malformed_metrics_logs_are_one_line_in_compare_and_visualize(tmp_path, content, match):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(content)
    one_line_error(run_cli("compare", run), "metrics.csv", match)
    one_line_error(run_cli("visualize", "curves", run), "metrics.csv", match)


def test_malformed_json_inputs_are_one_line(tmp_path, tiny_run):
    data = tiny_prepared(tmp_path / "prep")
    (data / "meta.json").write_text("[]")
    one_line_error(run_cli("eval", "--ckpt", tiny_run / "checkpoints/best.pt", "--data", data), "matches no known")
    with pytest.raises(DatasetError, match="format is None"):
        read_meta(data)
    (tmp_path / "list.json").write_text("[1, 2]")
    one_line_error(run_cli("compare", tmp_path / "list.json"), "not a JSON file written by `crosstask eval --json`")
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "predictions.json").write_text(json.dumps({"checkpoint": "x"}))
    one_line_error(run_cli("visualize", "predictions", preds), "not a crosstask predictions manifest", "missing")
