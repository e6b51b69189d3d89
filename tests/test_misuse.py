"""Inputs looked at before they are read, and outputs that an interrupted or failed command leaves (#30 item 5):
special files, huge images, a full disk during predict, a killed predict, concurrent prepares."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from helpers import run_cli

from crosstask_cli.errors import ConfigError
from crosstask_cli.predict import predict


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width×height RGB pixels (its data is a few bytes: decoding it would fail, but
    only after allocating the whole image, which is what the header check prevents)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def images(tmp_path, synthetic_raw) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, src in enumerate(sorted((synthetic_raw / "leftImg8bit" / "val").rglob("*.png"))[:2]):
        shutil.copy(src, folder / f"img{i}.png")
    return folder


def test_special_files_are_skipped_by_name_without_being_read(images, tiny_run, tmp_path):
    """A FIFO named like an image (reading it would wait forever) and a symbolic link to /dev/zero (reading it
    would never end), in a folder and given by name: each skipped and listed with what it is; the images are
    predicted."""
    os.mkfifo(images / "x.png")
    (images / "zero.png").symlink_to("/dev/zero")
    (images / "gone.png").symlink_to(tmp_path / "missing.png")
    ckpt = tiny_run / "checkpoints/best.pt"
    res = predict([images], ckpt, tmp_path / "out", workers=2)
    assert sorted(res.written) == ["img0", "img1"]
    skipped = {Path(p).name: why for p, why in res.skipped}
    assert skipped == {"x.png": "not a regular file (a FIFO); only files are read",
                       "zero.png": "not a regular file (a character device); only files are read",
                       "gone.png": "a broken symbolic link"}  # fmt: skip
    res = predict([images / "x.png", images / "zero.png", images / "img0.png"], ckpt, tmp_path / "out2")
    assert res.written == ["img0"] and [Path(p).name for p, _ in res.skipped] == ["x.png", "zero.png"]
    assert "FIFO" in res.skipped[0][1] and "character device" in res.skipped[1][1]


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_and_the_others_predicted(images, tiny_run, tmp_path):
    (images / "huge.png").write_bytes(_png_header(30000, 30000))
    ckpt = tiny_run / "checkpoints/best.pt"
    res = predict([images], ckpt, tmp_path / "out")
    assert sorted(res.written) == ["img0", "img1"]
    ((path, why),) = res.skipped
    assert path.endswith("huge.png") and "900000000 pixels" in why
    r = run_cli("predict", images / "img0.png", "--ckpt", ckpt, "--out", tmp_path / "small", "--max-pixels", "5000")
    assert r.exit_code == 1 and "128×64 pixels is more than the limit of 5,000 (--max-pixels)" in " ".join(
        r.output.split()
    )
    r = run_cli("predict", images, "--ckpt", ckpt, "--out", tmp_path / "x", "--max-pixels", "0")
    assert r.exit_code == 1 and "--max-pixels" in r.output and not (tmp_path / "x").exists()


def _fail_after(monkeypatch, n: int) -> None:
    """The disk fills up after ``n`` output files were written."""
    import crosstask_cli.predictions as predictions

    real = predictions.write_files
    calls = {"n": 0}

    def write_files(out, rel, files):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(out, rel, files)

    monkeypatch.setattr(predictions, "write_files", write_files)


def test_a_full_disk_during_predict_leaves_no_half_folder(images, tiny_run, tmp_path, monkeypatch):
    """A new folder is removed with everything in it; an earlier predictions folder keeps its files, marked
    partial: a rerun completes it without --force, and --force may replace it."""
    ckpt = tiny_run / "checkpoints/best.pt"
    out = tmp_path / "out"
    _fail_after(monkeypatch, 1)
    with pytest.raises(OSError, match=r"No space left on device; .*out was removed"):
        predict([images], ckpt, out, workers=2)
    assert not out.exists()

    monkeypatch.undo()
    predict([images / "img0.png"], ckpt, out)  # an earlier, complete predictions folder
    _fail_after(monkeypatch, 0)
    with pytest.raises(OSError, match=r"holds the predictions written so far: rerun the command to complete them"):
        predict([images], ckpt, out, force=True)
    assert (out / ".crosstask-partial.json").is_file() and (out / "img0_seg.png").is_file()
    monkeypatch.undo()
    res = predict([images], ckpt, out)  # a rerun completes it (no --force needed for crosstask's partial folder)
    assert sorted(res.written) == ["img0", "img1"] and not (out / ".crosstask-partial.json").exists()
    assert set(json.loads((out / "predictions.json").read_text())["inputs"]) == {"img0", "img1"}


def test_a_killed_predicts_folder_is_completed_by_a_rerun_or_replaced_by_force(images, tiny_run, tmp_path):
    """What a SIGKILL leaves (some files, the partial marker, no manifest): neither a rerun nor --force was
    allowed to touch it before."""
    ckpt = tiny_run / "checkpoints/best.pt"
    out = tmp_path / "out"
    predict([images / "img0.png"], ckpt, out)
    (out / "predictions.json").unlink()
    (out / ".crosstask-partial.json").write_text(json.dumps({"kind": "predictions folder", "pid": 1}))
    r = run_cli("predict", images, "--ckpt", ckpt, "--out", out)
    assert r.exit_code == 0, r.output
    assert set(json.loads((out / "predictions.json").read_text())["inputs"]) == {"img0", "img1"}
    (out / ".crosstask-partial.json").write_text(json.dumps({"kind": "predictions folder", "pid": 1}))
    r = run_cli("predict", images / "img1.png", "--ckpt", ckpt, "--out", out, "--force")
    assert r.exit_code == 0, r.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = run_cli("predict", images, "--ckpt", ckpt, "--out", other, "--force")
    assert r.exit_code == 1 and (other / "notes.txt").read_text() == "mine"


def test_concurrent_prepares_into_one_folder_are_refused(synthetic_raw, tmp_path):
    from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes, prepare_synthetic
    from crosstask_cli.locks import FileLock, lock_beside

    out = tmp_path / "prepared"
    with FileLock(lock_beside(out)):  # another prepare is writing it
        with pytest.raises(ConfigError, match=r"prepared is in use: another crosstask process \(PID \d+\)"):
            prepare_cityscapes(synthetic_raw, out, PrepareOptions(32, 64, 7), dataset="synthetic")
        with pytest.raises(ConfigError, match="is in use"):
            prepare_synthetic(out, train=1, val=1, height=32, width=64)
    assert not out.exists()
    prepare_cityscapes(synthetic_raw, out, PrepareOptions(32, 64, 7), dataset="synthetic")
    assert (out / "meta.json").is_file() and not lock_beside(out).exists()


def test_every_output_option_is_never_an_input_nor_holds_nor_lies_inside_an_input(tmp_path, synthetic_raw, synthetic_prepared,
                                                                        tiny_run, images):  # fmt: skip
    """Each output option of each command against an input it reads: one line before any work, and the input
    untouched. (An output inside a checkpoint's run folder is fine: a sweep writes RUN/eval.json.)"""
    import hashlib

    def fingerprint(folder: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
        return h.hexdigest()

    ckpt = tiny_run / "checkpoints/best.pt"
    before = {p: fingerprint(p) for p in (synthetic_raw, synthetic_prepared, tiny_run, images)}
    config = tiny_run / "config.json"
    cases = [
        (["prepare", "cityscapes", "--src", synthetic_raw, "--out", synthetic_raw / "prepared"],
         "lies inside the input --src"),
        (["prepare", "cityscapes", "--src", synthetic_raw, "--out", synthetic_raw.parent, "--force"],
         "contains the input --src"),
        (["train", "synthetic", "--data", synthetic_prepared, "--run-dir", synthetic_prepared / "runs" / "a"],
         "lies inside the input --data"),
        (["train", "synthetic", "--config", config, "--data", synthetic_prepared, "--run-dir", tiny_run, "--force"],
         "contains the input --config"),
        (["train", "synthetic", "--data", synthetic_prepared, "--tasks", "seg", "--method", "kd4mtl", "--teacher",
          f"seg={ckpt}", "--run-dir", tiny_run.parent, "--force"], "contains the input --teacher seg"),
        (["predict", images, "--ckpt", ckpt, "--out", images / "preds"], "inside the input folder"),
        (["predict", images / "img0.png", "--ckpt", ckpt, "--out", tiny_run, "--force"], "contains the input --ckpt"),
        (["eval", "--ckpt", ckpt, "--data", synthetic_prepared, "--json", synthetic_prepared / "r.json"],
         "lies inside the input --data"),
        (["visualize", "samples", "--data", synthetic_prepared, "--out", synthetic_prepared / "s.png"],
         "lies inside the input --data"),
        (["visualize", "curves", tiny_run, "--out", tiny_run.parent], "contains the input RUN"),
        (["bench", "--data", synthetic_prepared, "--json", synthetic_prepared / "b.json", "--part", "loader"],
         "lies inside the input --data"),
        (["export", "--ckpt", ckpt, "--onnx", ckpt], "is the input --ckpt"),
        (["compare", tiny_run, "--markdown", tiny_run / "metrics.csv"], "lies inside the input run 1"),
    ]  # fmt: skip
    for args, message in cases:
        r = run_cli(*args)
        assert r.exit_code != 0 and message in " ".join(r.output.split()), (args, r.output)
    assert {p: fingerprint(p) for p in before} == before
    assert not (synthetic_raw / "prepared").exists() and not (images / "preds").exists()


def test_a_sweep_whose_runs_would_lie_inside_their_data_is_refused_before_anything_runs(tmp_path, synthetic_prepared):
    from crosstask_cli.sweep import load_spec

    spec = tmp_path / "spec.toml"
    spec.write_text(f'[sweep]\ndataset = "synthetic"\nout = "{synthetic_prepared / "runs"}"\nseeds = [0]\n'
                    f'[base]\ndata = "{synthetic_prepared}"\n[variants.a]\n')  # fmt: skip
    with pytest.raises(ConfigError, match=r"variant 'a': \[sweep\] out: the run .* lies inside the input --data"):
        load_spec(spec)
