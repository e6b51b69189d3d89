"""Run directories: ``RUN/config.json``, ``metrics.csv``, ``checkpoints/{last,best}.pt``, ``plots/``; the rules for
a new run, ``--resume`` and ``--force``."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from crosstask_cli.engine import distributed as ddp
from crosstask_cli.engine.config import TrainConfig
from crosstask_cli.errors import RunDirError

CONFIG = "config.json"
METRICS = "metrics.csv"
LAST = Path("checkpoints") / "last.pt"
BEST = Path("checkpoints") / "best.pt"
PLOTS = "plots"
RESUME_MAY_CHANGE = ("epochs", "device", "workers")  # flat keywords; everything else is the saved recipe


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class OpenedRun:
    run_dir: Path
    cfg: TrainConfig
    resume_from: Path | None  # last.pt to continue from, or None
    restarted: bool  # --resume of a run killed before its first checkpoint: starts over with its saved config


def open_run_dir(
    cfg: TrainConfig,
    run_dir: str | Path | None,
    resume: bool,
    force: bool,
    resume_overrides: dict | None,
    dist: ddp.DistInfo,
) -> OpenedRun:
    """Apply the run-directory rules; returns the directory, the config to train with and what to resume.

    New run: the directory must be absent or empty, unless ``force`` (then it is replaced). ``resume``: the saved
    config is used; ``resume_overrides`` may change only :data:`RESUME_MAY_CHANGE`.
    """
    if run_dir is None and cfg.runtime.run_dir is None and dist.enabled:
        raise RunDirError("distributed training needs --run-dir (every process must agree on it)")
    run_dir = Path(run_dir or cfg.runtime.run_dir or default_run_dir(cfg))
    last = run_dir / LAST
    if resume:
        if not last.is_file() and not (run_dir / CONFIG).is_file():
            raise RunDirError(f"--resume: {run_dir} holds no checkpoint (expected {last})")
        saved = TrainConfig.load(run_dir / CONFIG)
        if saved.data.name != cfg.data.name:
            raise RunDirError(f"{run_dir} is a {saved.data.name} run, not {cfg.data.name}")
        overrides = dict(resume_overrides or {})
        unknown = set(overrides) - set(RESUME_MAY_CHANGE)
        if unknown:
            raise RunDirError(f"--resume continues the saved config; cannot change {', '.join(sorted(unknown))}")
        cfg = saved.replace(**overrides)
        opened = OpenedRun(run_dir, cfg, last if last.is_file() else None, restarted=not last.is_file())
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            if not force:
                raise RunDirError(
                    f"{run_dir} already holds a run; use --resume to continue it or --force to replace it"
                )
            if run_dir.is_file():
                raise RunDirError(f"{run_dir} is a file, expected a run directory")
            ddp.barrier(dist)  # every process has checked before the main one deletes
            if dist.is_main:
                shutil.rmtree(run_dir)
        opened = OpenedRun(run_dir, cfg, None, restarted=False)
    opened.cfg = opened.cfg.replace(run_dir=str(run_dir))
    return opened
