"""Run directories: ``RUN/config.json``, ``metrics.csv``, ``checkpoints/{last,best}.pt``, ``plots/``; the rules for
a new run, ``--resume`` and ``--force``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from crosstask_cli.engine import distributed as ddp
from crosstask_cli.engine.config import TrainConfig
from crosstask_cli.errors import RunDirError
from crosstask_cli.locks import FileLock, LockBusy
from crosstask_cli.outputs import check_not_an_input, clear_folder, made_by_crosstask

CONFIG = "config.json"
METRICS = "metrics.csv"
LAST = Path("checkpoints") / "last.pt"
BEST = Path("checkpoints") / "best.pt"
PLOTS = "plots"
LOCK = ".crosstask.lock"
RESUME_MAY_CHANGE = ("epochs", "device", "workers", "verify")  # flat keywords; everything else is the saved recipe


class RunLock:
    """An exclusive OS lock (:class:`~crosstask_cli.locks.FileLock`) on ``RUN/.crosstask.lock`` while a process
    trains in ``RUN``. A second process is refused with the PID of the one holding it; a lock file left by a dead
    process is taken over (``stale_pid``). The file is removed on release, and the run directory too if this lock
    created it and nothing was written."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.lock = FileLock(self.path)
        self.created_dir = False

    @property
    def stale_pid(self) -> int | None:
        return self.lock.stale_pid

    def acquire(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir} is a file, expected a run directory")
        self.created_dir = not self.run_dir.exists()
        try:
            self.lock.acquire()
        except LockBusy as busy:
            raise RunDirError(
                f"{self.run_dir} is in use: another training (PID {busy.pid or 'unknown'}) holds its lock; wait "
                "for it to finish or choose another --run-dir"
            ) from None
        return self

    def release(self) -> None:
        if self.lock.fd is None:
            return
        self.lock.release()
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only if the run never wrote anything
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_inputs(cfg: TrainConfig) -> dict[str, str | None]:
    """What a training reads, by option: a run directory must not be or contain any of them."""
    from crosstask_cli.engine.config import PAPER_DEFAULTS, parse_teachers

    teachers = parse_teachers(cfg.loss.teachers, cfg.model.tasks) if cfg.loss.teachers else {}
    return {
        "--data": cfg.data.root or PAPER_DEFAULTS[cfg.data.name]["data"],
        "--encoder-weights": cfg.model.encoder_weights,
    } | {f"--teacher {task}": ckpt for task, ckpt in teachers.items()}


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class OpenedRun:
    run_dir: Path
    cfg: TrainConfig
    resume_from: Path | None  # last.pt to continue from, or None
    restarted: bool  # --resume of a run killed before its first checkpoint: starts over with its saved config
    lock: RunLock | None = None  # held by the main process until training ends (release it)


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
        check_not_an_input(run_dir, "--run-dir", run_inputs(cfg))
        lock = RunLock(run_dir).acquire() if dist.is_main else None
        opened = OpenedRun(run_dir, cfg, last if last.is_file() else None, restarted=not last.is_file(), lock=lock)
    else:
        check_not_an_input(run_dir, "--run-dir", run_inputs(cfg))
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"{run_dir} is a file, expected a run directory")
        existing = run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir())
        if existing and not force:
            raise RunDirError(f"{run_dir} already holds a run; use --resume to continue it or --force to replace it")
        if existing and not made_by_crosstask(run_dir, "run directory"):
            raise RunDirError(
                f"{run_dir} is not a crosstask run directory (no {CONFIG}); --force replaces only a run crosstask "
                "made: remove the folder yourself or choose another --run-dir"
            )
        lock = RunLock(run_dir).acquire() if dist.is_main else None
        ddp.barrier(dist)  # every process has checked before the main one deletes
        if existing and dist.is_main:
            clear_folder(run_dir, keep=(LOCK,))
        opened = OpenedRun(run_dir, cfg, None, restarted=False, lock=lock)
    opened.cfg = opened.cfg.replace(run_dir=str(run_dir))
    return opened
