"""Shared test helpers: the in-process CLI runner, tiny option sets, and builders of tiny datasets in each
supported layout (written by the tests themselves; nothing is downloaded)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import cv2
import numpy as np


def write_raw_sample(
    root: Path, split: str, city: str, stem: str, rgb: np.ndarray, ids: np.ndarray, disp: np.ndarray, camera=None
) -> None:
    for sub, name, data in (
        ("leftImg8bit", f"{stem}_leftImg8bit.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
        ("gtFine", f"{stem}_gtFine_labelIds.png", ids.astype(np.uint8)),
        ("disparity", f"{stem}_disparity.png", disp.astype(np.uint16)),
    ):
        d = root / sub / split / city
        d.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(d / name), data)
    if camera is not None:
        d = root / "camera" / split / city
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{stem}_camera.json").write_text(json.dumps(camera))


def all_ids_label(h: int = 4, w: int = 34) -> np.ndarray:
    """Every official label id 0..33, one column each (repeated down the rows)."""
    return np.tile(np.arange(34, dtype=np.uint8)[None, :w], (h, 1))


def make_raw_cityscapes(root: Path, n_train: int = 2, n_val: int = 1, h: int = 4, w: int = 34) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            disp = np.full((h, w), 1000, np.uint16)
            write_raw_sample(root, split, "aachen", f"aachen_{i:06d}_000019", rgb, all_ids_label(h, w), disp)
    return root


def make_mtan(root: Path, kind: str, n_train: int = 3, n_val: int = 2, h: int = 8, w: int = 16) -> Path:
    """MTAN layout: kind 'cityscapes' (label_7, label_19, inverse depth) or 'nyu' (label, metres)."""
    rng = np.random.default_rng(1)
    label_dirs = {"cityscapes": {"label_7": 7, "label_19": 19}, "nyu": {"label": 13}}[kind]
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            d = root / split
            for sub in ("image", "depth", *label_dirs):
                (d / sub).mkdir(parents=True, exist_ok=True)
            np.save(d / "image" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
            for sub, c in label_dirs.items():
                lab = rng.integers(-1, c, (h, w)).astype(np.float32)
                np.save(d / sub / f"{i}.npy", lab)
            depth = rng.random((h, w, 1)).astype(np.float32) * (0.3 if kind == "cityscapes" else 8.0)
            depth[0, 0, 0] = 0
            np.save(d / "depth" / f"{i}.npy", depth)
            if kind == "nyu":
                (d / "normal").mkdir(exist_ok=True)
                np.save(d / "normal" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
    return root


TINY = ["--height", "32", "--width", "64", "--enc-layers", "18", "--batch-size", "4", "--workers", "0"]


def run_cli(*args: str):
    """Invoke the crosstask CLI in-process; returns the click Result (exit_code, output)."""
    from typer.testing import CliRunner

    from crosstask_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def forbid_host_reads(monkeypatch):
    """Within it, every way a tensor's value reaches the host raises: on a GPU each of them would wait for the
    device, so code run inside may only launch work."""
    import torch

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} read a value back to the host during a metric update")

        return fail

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, forbidden(name))
        yield
