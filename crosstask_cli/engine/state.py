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


RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "best_score", "best_epoch", "nonfinite", "partial_epoch",
               "distillation")  # fmt: skip


def checkpoint_payload(trainer, row: dict | None, partial: dict | None = None) -> dict:
    """The resumable checkpoint contents (checkpoint format v1, ``last.pt``) of a
    :class:`~crosstask_cli.engine.trainer.Trainer`.

    The model config, dataset description, training config, weights, the weighting's state (and its own optimizers)
    and the epoch's metrics, plus :data:`RESUME_KEYS`: the optimizer, scheduler, grad scaler, RNG states, best-epoch
    bookkeeping and, mid-epoch, the progress inside the epoch (``partial``). :func:`without_resume_state` gives the
    weights-only form (``best.pt``) of the same payload, so the weights are copied off the device once.
    """
    return {
        "model_config": trainer.model.config.to_dict(),
        "dataset": trainer.dataset_info,
        "train_config": trainer.cfg.to_dict(),
        "model": {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()},
        "weighting": {
            "name": trainer.cfg.optim.weighting,
            "state": trainer.weighting.state_dict(),
            "weights": trainer.weighting.weights(),
            "optimizers": [o.state_dict() for o in trainer.weighting_optimizers],
        },
        "epoch": trainer.epoch,
        "step": trainer.step_count,
        "metrics": row or {},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": rng_state(),
        "best_score": trainer.selection.best_score,
        "best_epoch": trainer.selection.best_epoch,
        "nonfinite": trainer.nonfinite,
        "partial_epoch": partial,
        **({"distillation": trainer.kd.state_dict()} if getattr(trainer, "kd", None) is not None else {}),
    }


def without_resume_state(payload: dict) -> dict:
    """The non-resumable checkpoint (``best.pt``): everything but :data:`RESUME_KEYS` and the weighting's optimizers."""
    out = {k: v for k, v in payload.items() if k not in RESUME_KEYS}
    out["weighting"] = {k: v for k, v in payload["weighting"].items() if k != "optimizers"}
    return out
