"""Launchers for sweeps that outgrow one process: ``pool`` (N runs at once on this machine, each with its own GPUs
or its share of the CPU threads) and ``slurm`` (the pending runs as one job array, through submitit).

Each run is one :class:`SweepJob`. It takes the run's lock (``OUT/.locks/``), runs ``crosstask train …`` then
``crosstask eval …`` exactly as ``sweep --print-commands`` prints them (through ``torchrun`` when the run has
several GPUs), appends their output to ``OUT/logs/<variant>/seed-<seed>.log``, records its status in the run
directory (``sweep-run.json``: running with its job id, trained, done with metrics, failed with the last error line)
and rebuilds the manifest. Under SLURM, a job that is preempted or reaches its time limit is requeued by submitit
(:meth:`SweepJob.checkpoint`) and its training resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosstask_cli.errors import ConfigError, MissingDependencyError
from crosstask_cli.sweep import (
    EVAL_FILE,
    SLURM_FOLDER,
    SweepReport,
    SweepRun,
    SweepSpec,
    _summary_or_none,
    changed_recipe,
    check_recipes,
    eval_args,
    load_spec,
    prepare_data,
    read_jobs,
    read_record,
    rebuild_manifest,
    recipe_hash,
    run_lock_path,
    run_status,
    slurm_minutes,
    train_argv,
    write_record,
)

LOGS = "logs"  # OUT/logs/<variant>/seed-<seed>.log: each run's output, attempts appended
LAUNCHERS = ("serial", "pool", "slurm")


def log_path(spec: SweepSpec, run: SweepRun) -> Path:
    return spec.out / LOGS / run.variant / f"seed-{run.seed}.log"


@dataclass
class SweepJob:
    """One run of a sweep, as a separate job: ``job()`` trains (or resumes) and evaluates it and returns its
    status: done, failed, changed (its recipe differs and ``afresh`` is off) or elsewhere (another process holds
    it). Picklable, for submitit. ``cwd``: where the spec's relative paths are relative to."""

    spec_path: str
    variant: str
    seed: int
    gpus: int = 0  # > 1: torchrun --nproc-per-node GPUS
    device: str | None = None
    afresh: bool = False  # --rerun-changed: a run whose recipe changed is trained again
    env: dict[str, str] = field(default_factory=dict)  # CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, …
    cwd: str = field(default_factory=os.getcwd)

    def __call__(self) -> str:
        from crosstask_cli.locks import FileLock, LockBusy

        os.chdir(self.cwd)
        spec = load_spec(self.spec_path)
        run = next(r for r in spec.runs() if r.key == (self.variant, self.seed))
        lock = FileLock(run_lock_path(spec, run))
        try:
            lock.acquire()
        except LockBusy:
            return "elsewhere"
        try:
            return self._run(spec, run)
        finally:
            lock.release()
            rebuild_manifest(spec)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this when SLURM preempts the job or its time runs out: the same job is requeued, and it
        resumes the run's training from its last checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def _run(self, spec: SweepSpec, run: SweepRun) -> str:
        from crosstask_cli.engine.config import TrainConfig

        changed = bool(changed_recipe(spec, run))
        if changed and not self.afresh:
            return "changed"
        if run_status(run) == "done" and not changed:
            return "done"
        job, t0 = job_id(), time.monotonic()
        recipe = recipe_hash(TrainConfig.for_dataset(spec.dataset, **run.options))
        if read_record(run):
            write_record(run, status="running", error=None, job=job)
        rebuild_manifest(spec)  # the run shows as running, with this process's PID
        log = log_path(spec, run)
        log.parent.mkdir(parents=True, exist_ok=True)
        train = train_argv(spec, run, afresh=changed, device=self.device)
        if train is not None:
            if self._step(train, log, job, distributed=self.gpus > 1) != 0:
                return self._failed(run, log, recipe, job)
            write_record(run, status="trained", recipe=recipe, error=None, job=job)
        if self._step(eval_args(spec, run, self.device), log, job) != 0:
            return self._failed(run, log, recipe, job)
        metrics = _summary_or_none(run.run_dir / EVAL_FILE)
        write_record(run, status="done", recipe=recipe, metrics=metrics, seconds=round(time.monotonic() - t0, 1),
                     error=None, job=job)  # fmt: skip
        return "done"

    def _step(self, argv: list[str], log: Path, job: str, distributed: bool = False) -> int:
        """Run one ``crosstask …`` command (its output appended to ``log``); returns its exit code."""
        import subprocess

        head = [sys.executable, "-m", "crosstask_cli"]
        if distributed:
            head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.gpus}",
                    "-m", "crosstask_cli"]  # fmt: skip
        with log.open("a") as fh:
            fh.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S')} job {job}: {' '.join(argv)}\n")
            fh.flush()
            env = {**os.environ, **self.env, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
            return subprocess.run([*head, *argv[1:]], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL, check=False).returncode  # fmt: skip

    def _failed(self, run: SweepRun, log: Path, recipe: str, job: str) -> str:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run, status="failed", recipe=recipe, error=last_error_line(log), job=job)
        return "failed"


def job_id() -> str:
    """The SLURM job id inside a submitit job (array jobs as JOB_TASK), else this process's ``pid-N``."""
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - not in a submitit job (or no submitit): a local process
        return f"pid-{os.getpid()}"


def last_error_line(log: Path) -> str:
    """The last line of a run's log that says what went wrong (crosstask's one-line ``error:``, a Python
    exception, or a signal), else its last line."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - 16384))
            lines = [line.strip() for line in fh.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if line.startswith(("error:", "Error", "Traceback")) or "Error:" in line or "Signals." in line:
            return line[:300]
    return lines[-1][:300] if lines else "(empty log)"


# --- the pool launcher ----------------------------------------------------------------------------------------


def pool_slots(parallel: int, gpus_per_run: int = 0, cpus: int | None = None) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` slots: its own GPUs (``CUDA_VISIBLE_DEVICES``) when
    ``gpus_per_run`` > 0, else its share of the CPU threads (``OMP_NUM_THREADS``)."""
    from crosstask_cli.predict import usable_cpus

    if parallel < 1:
        raise ConfigError(f"--parallel must be ≥ 1, got {parallel}")
    if gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run must be ≥ 0, got {gpus_per_run}")
    if gpus_per_run:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = [x.strip() for x in visible.split(",") if x.strip()]
        else:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        need = parallel * gpus_per_run
        if len(ids) < need:
            raise ConfigError(f"--parallel {parallel} × --gpus-per-run {gpus_per_run} needs {need} GPUs; "
                              f"{len(ids)} are visible")  # fmt: skip
        return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i * gpus_per_run : (i + 1) * gpus_per_run])}
                for i in range(parallel)]  # fmt: skip
    threads = str(max(1, (cpus or usable_cpus()) // parallel))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]


def run_pool(
    spec: SweepSpec,
    only: list[str] | None = None,
    parallel: int = 2,
    gpus_per_run: int = 0,
    device: str | None = None,
    rerun_changed: bool = False,
    on_start: Callable[[SweepRun, dict], None] | None = None,
    on_end: Callable[[SweepRun, str, float], None] | None = None,
    message: Callable[[str], None] = lambda m: None,
) -> SweepReport:
    """Run the sweep's unfinished runs ``parallel`` at a time, each as a :class:`SweepJob` in its own processes
    (slots: :func:`pool_slots`). ``on_start(run, env)`` / ``on_end(run, status, seconds)`` follow each job."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    runs = spec.runs(only)
    changed = check_recipes(spec, runs, rerun_changed)
    slots = pool_slots(parallel, gpus_per_run)
    prepare_data(spec, message)
    rebuild_manifest(spec)
    todo = [r for r in runs if run_status(r) != "done" or r.key in changed]
    report = SweepReport(total=len(runs), done_before=len(runs) - len(todo))
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)
    dev = device or ("cuda" if gpus_per_run else None)

    def work(run: SweepRun) -> tuple[SweepRun, str]:
        env = free.get()
        t0 = time.monotonic()
        try:
            if on_start:
                on_start(run, env)
            status = SweepJob(str(spec.path), run.variant, run.seed, gpus_per_run, dev, run.key in changed, env)()
        finally:
            free.put(env)
        if on_end:
            on_end(run, status, time.monotonic() - t0)
        return run, status

    start = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(work, todo))
    _account(report, results)
    report.seconds = time.monotonic() - start
    return report


def _account(report: SweepReport, results: list[tuple[SweepRun, str]]) -> None:
    for run, status in results:
        name = f"{run.variant}/seed-{run.seed}"
        if status == "done":
            report.trained.append(name)
        elif status == "elsewhere":
            report.elsewhere.append(name)
        else:
            report.failed.append((name, read_record(run).get("error", status)))


# --- SLURM through submitit -------------------------------------------------------------------------------------


def slurm_parameters(table: dict[str, Any]) -> dict[str, Any]:
    """The ``[slurm]`` table → submitit ``SlurmExecutor.update_parameters`` keywords: one task per job on one node
    (a run of several GPUs starts ``torchrun`` itself), its GPUs, CPUs and memory, the array's parallelism."""
    params: dict[str, Any] = {"job_name": "crosstask-sweep", "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": 120}
    if "time" in table:
        params["time"] = slurm_minutes(table["time"])
    if table.get("gpus_per_run"):
        params["gpus_per_node"] = table["gpus_per_run"]
    if "cpus" in table:
        params["cpus_per_task"] = table["cpus"]
    for key in ("partition", "mem", "account", "constraint", "qos", "array_parallelism", "setup"):
        if key in table:
            params[key] = table[key]
    if table.get("extra"):
        params["additional_parameters"] = dict(table["extra"])
    return params


def submit_jobs(spec: SweepSpec, executor, only: list[str] | None = None, rerun_changed: bool = False,
                gpus: int = 0, device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Submit every unfinished run as one :class:`SweepJob` through a submitit ``executor`` (one job array on
    SLURM); returns {variant/seed-N: submitit job}; their ids are also written to ``OUT/slurm/jobs.json`` (and
    into the runs' records) for ``--status``."""
    from crosstask_cli.atomic import atomic_write_json

    runs = spec.runs(only)
    changed = check_recipes(spec, runs, rerun_changed)
    prepare_data(spec)  # here, once, before any job starts
    rebuild_manifest(spec)
    todo = [r for r in runs if run_status(r) != "done" or r.key in changed]
    if not todo:
        return {}
    jobs = [SweepJob(str(spec.path.resolve()), r.variant, r.seed, gpus, device, r.key in changed) for r in todo]
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    ids = {f"{r.variant}/seed-{r.seed}": str(s.job_id) for r, s in zip(todo, submitted, strict=True)}
    for run, sub in zip(todo, submitted, strict=True):
        if read_record(run):  # an earlier attempt's job id would stand in the manifest otherwise
            write_record(run, job=str(sub.job_id))
    path = spec.out / SLURM_FOLDER / "jobs.json"
    earlier = read_jobs(spec)
    atomic_write_json(path, {**earlier, **ids})
    rebuild_manifest(spec)
    return {f"{r.variant}/seed-{r.seed}": sub for r, sub in zip(todo, submitted, strict=True)}


def slurm_executor(spec: SweepSpec, table: dict[str, Any]):
    """A submitit SlurmExecutor writing its job files to ``OUT/slurm``, with the ``[slurm]`` table's parameters."""
    submitit = require_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=spec.out / SLURM_FOLDER / "%j", max_num_timeout=20)
    except RuntimeError as exc:  # no srun/sbatch on this machine
        raise ConfigError(f"--launcher slurm: {exc} Run it on the cluster's login node, or use --launcher pool "
                          "here") from None  # fmt: skip
    executor.update_parameters(**slurm_parameters(table))
    return executor


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise MissingDependencyError(
            "--launcher slurm submits through submitit: pip install 'crosstask-cli[slurm]'"
        ) from None
    return submitit
