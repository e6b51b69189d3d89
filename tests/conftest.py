"""Shared fixtures: tiny generated datasets, never downloaded ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path_factory, monkeypatch):
    # No test may find (or fetch) real pretrained weights.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """A small synthetic set in the official Cityscapes raw layout (12 train, 4 val at 64×128)."""
    from crosstask_cli.data.prepare import prepare_synthetic

    out = tmp_path_factory.mktemp("syn") / "synthetic"
    prepare_synthetic(out, train=12, val=4, height=64, width=128, seed=0)
    return out


@pytest.fixture(scope="session")
def synthetic_prepared(synthetic_raw, tmp_path_factory) -> Path:
    """``synthetic_raw`` prepared at 32×64, 7 classes."""
    from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes

    out = tmp_path_factory.mktemp("prep") / "prepared"
    prepare_cityscapes(synthetic_raw, out, PrepareOptions(32, 64, 7), dataset="synthetic")
    return out


@pytest.fixture(scope="session")
def tiny_run(synthetic_raw, tmp_path_factory) -> Path:
    """A finished 1-epoch training run (ResNet-18, 32×64) on ``synthetic_raw``; returns its run directory."""
    import crosstask_cli as ct

    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_raw), height=32, width=64, epochs=1, enc_layers=18,
                                     batch_size=4, workers=0, max_steps_per_epoch=2)  # fmt: skip
    ct.train(cfg, run_dir=run)
    return run
