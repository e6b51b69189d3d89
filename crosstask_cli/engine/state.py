"""Training state: seeding, RNG snapshots, and what a checkpoint holds (weights, optimizers, schedule, RNG)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy and torch CPU generator states as weights-only-loadable data (tensors, lists, numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def checkpoint_payload(trainer, resumable: bool, row: dict | None, partial: dict | None = None) -> dict:
    """The checkpoint contents (checkpoint format v1) of a :class:`~crosstask_cli.engine.trainer.Trainer`.

    Every checkpoint holds the model config, dataset description, training config, weights, the weighting's
    state and the epoch's metrics; a resumable one (``last.pt``) adds the optimizers, scheduler, grad scaler,
    RNG states, best-epoch bookkeeping and, mid-epoch, the progress inside the epoch (``partial``).
    """
    payload = {
        "model_config": trainer.model.config.to_dict(),
        "dataset": trainer.dataset_info,
        "train_config": trainer.cfg.to_dict(),
        "model": {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()},
        "weighting": {
            "name": trainer.cfg.optim.weighting,
            "state": trainer.weighting.state_dict(),
            "weights": trainer.weighting.weights(),
        },
        "epoch": trainer.epoch,
        "step": trainer.step_count,
        "metrics": row or {},
    }
    if resumable:
        payload["weighting"]["optimizers"] = [o.state_dict() for o in trainer.weighting_optimizers]
        payload.update(
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict(),
            scaler=trainer.scaler.state_dict(),
            rng=rng_state(),
            best_score=trainer.selection.best_score,
            best_epoch=trainer.selection.best_epoch,
            nonfinite=trainer.nonfinite,
            partial_epoch=partial,
        )
    return payload
