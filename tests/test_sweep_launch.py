"""Sweeps beyond one process (#29): the pool launcher's slots, SLURM parameters as submitit renders them, jobs that
requeue, --status; and, with real processes (slow), a pool of two with a job killed mid-run and finished by
submitit's local executor, and two sweep processes sharing one spec."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli
from test_sweep import write_spec

from crosstask_cli.errors import ConfigError
from crosstask_cli.sweep import check_slurm_table, load_spec, read_record, run_status, slurm_minutes
from crosstask_cli.sweep_launch import SweepJob, last_error_line, pool_slots, run_pool, slurm_parameters

SLURM = """
[slurm]
partition = "gpu"
time = "0-04:00:00"
gpus_per_run = 2
cpus = 16
mem = "64G"
account = "proj42"
constraint = "a100"
qos = "high"
array_parallelism = 2
setup = ["module load cuda/12.4"]
extra = { reservation = "res1" }
"""


def test_slurm_table_becomes_the_sbatch_script_submitit_renders(tmp_path, synthetic_prepared):
    submitit_slurm = pytest.importorskip("submitit.slurm.slurm")
    path = write_spec(tmp_path, synthetic_prepared)
    path.write_text(path.read_text() + SLURM)
    spec = load_spec(path)
    params = slurm_parameters(spec.slurm)
    text = submitit_slurm._make_sbatch_string(command="python -m x", folder=tmp_path / "f", map_count=4, **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G", "#SBATCH --account=proj42",
                 "#SBATCH --constraint=a100", "#SBATCH --qos=high", "#SBATCH --reservation=res1",
                 "#SBATCH --array=0-3%2", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "module load cuda/12.4"):  # fmt: skip
        assert line in text, line
    assert "--signal=USR2@120" in text  # submitit's preemption signal, ahead of the time limit
    assert set(params) <= set(submitit_slurm._get_default_parameters())  # names SlurmExecutor accepts
    if shutil.which("srun") is None:  # this machine: one line, not submitit's traceback
        r = run_cli("sweep", path, "--launcher", "slurm")
        assert r.exit_code == 1 and "--launcher slurm: Could not detect" in " ".join(r.output.split())
        assert "--launcher pool" in " ".join(r.output.split())


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"partitoin": "gpu"}, r"\[slurm\] knows .* not partitoin"),
        ({"cpus": "16"}, r"\[slurm\] cpus = '16': expected an integer"),
        ({"time": "forever"}, r"\[slurm\] time = 'forever': expected minutes or D-HH:MM:SS"),
        ({"gpus_per_run": -1}, r"gpus_per_run must be ≥ 0"),
        ({"setup": [1]}, r"setup must be a list of shell lines"),
    ],
)
def test_a_bad_slurm_table_is_one_line_naming_the_key(table, match):
    with pytest.raises(ConfigError, match=match):
        check_slurm_table(Path("s.toml"), table)


def test_slurm_times_in_minutes():
    assert [slurm_minutes(v) for v in (90, "45", "2:30:00", "1-00:00:00", "0:00:30")] == [90, 45, 150, 1440, 1]


def test_pool_slots_split_the_gpus_or_the_threads(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    assert [s["CUDA_VISIBLE_DEVICES"] for s in pool_slots(2, gpus_per_run=2)] == ["0,1", "2,3"]
    with pytest.raises(ConfigError, match=r"--parallel 3 × --gpus-per-run 2 needs 6 GPUs; 5 are visible"):
        pool_slots(3, gpus_per_run=2)
    assert pool_slots(2, cpus=8) == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert pool_slots(4, cpus=2)[0]["OMP_NUM_THREADS"] == "1"


def test_the_pool_keeps_its_slots_busy_and_accounts_every_run(tmp_path, synthetic_prepared, monkeypatch):
    """Jobs replaced by a stand-in that records its slot: never more than --parallel at once, each slot's
    environment used by one job at a time, and the report counts done, failed and left-to-another runs."""
    spec = load_spec(write_spec(tmp_path, synthetic_prepared, seeds=(0, 1, 2)))
    active, peak, seen, lock = [], [0], [], threading.Lock()

    def fake_job(self) -> str:
        with lock:
            assert all(e is not self.env for e, _ in active), "a slot used twice at once"
            active.append((self.env, self.variant))
            peak[0] = max(peak[0], len(active))
            seen.append(self.env["OMP_NUM_THREADS"])
        time.sleep(0.05)
        with lock:
            active[:] = [(e, v) for e, v in active if e is not self.env]
        return {0: "done", 1: "elsewhere"}.get(self.seed, "failed")

    monkeypatch.setattr(SweepJob, "__call__", fake_job)
    report = run_pool(spec, parallel=2)
    assert peak[0] == 2 and len(seen) == 6
    assert sorted(report.trained) == ["mtl/seed-0", "seg-only/seed-0"]
    assert sorted(report.elsewhere) == ["mtl/seed-1", "seg-only/seed-1"] and len(report.failed) == 2


def test_a_job_is_picklable_and_requeues_itself(tmp_path):
    import pickle

    submitit_helpers = pytest.importorskip("submitit.helpers")
    job = SweepJob(str(tmp_path / "spec.toml"), "mtl", 1, gpus=2, device="cuda", env={"X": "1"})
    again = pickle.loads(pickle.dumps(job))
    assert again == job
    resubmission = job.checkpoint()
    assert isinstance(resubmission, submitit_helpers.DelayedSubmission) and resubmission.function is job


def test_the_last_error_line_of_a_log(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("== start\nepoch 1 …\nerror: --data d: dataset directory not found\n\n")
    assert last_error_line(log) == "error: --data d: dataset directory not found"
    log.write_text("epoch 1\nepoch 2\n")
    assert last_error_line(log) == "epoch 2"
    assert last_error_line(tmp_path / "missing.log") == "(no log)"


def test_status_prints_every_run_without_starting_anything(tmp_path, synthetic_prepared):
    from crosstask_cli.sweep import run_sweep

    path = write_spec(tmp_path, synthetic_prepared, epochs=1, seeds=(0,))
    spec = load_spec(path)
    run_sweep(spec, only=["seg-only"])
    (spec.out / "mtl" / "seed-0").mkdir(parents=True)
    (spec.out / "mtl" / "seed-0" / "sweep-run.json").write_text(
        json.dumps({"status": "failed", "error": "error: boom"})
    )
    r = run_cli("sweep", path, "--status")
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "seg-only/seed-0" in text and "done" in text and "error: boom" in text
    assert "1 done, 1 failed" in text and not (spec.out / "mtl" / "seed-0" / "config.json").exists()
    r = run_cli("sweep", path, "--launcher", "cluster")
    assert r.exit_code == 1 and "--launcher must be one of serial, pool, slurm" in r.output


# --- real processes -------------------------------------------------------------------------------------------


@pytest.mark.slow  # four tiny runs as separate processes, two at a time, a kill and a resumed job: about a minute
@pytest.mark.integration
def test_a_pool_of_two_with_a_job_killed_mid_run_is_finished_by_submitit_jobs(tmp_path, synthetic_prepared):
    """2 variants × 2 seeds, two at a time, each run in its own processes with its log. One run's training is
    SIGKILLed once it has checkpointed an epoch: that run is recorded failed with its log's last line, the others
    finish. Submitting the sweep to submitit's local executor then runs only that run, as a separate job, which
    resumes it (the epochs it had are kept): 4 evaluated runs and a whole manifest."""
    submitit = pytest.importorskip("submitit")
    from crosstask_cli.sweep_launch import log_path, submit_jobs

    spec = load_spec(write_spec(tmp_path, synthetic_prepared, epochs=6, seeds=(0, 1)))
    victim = next(r for r in spec.runs() if r.key == ("mtl", 0))
    starts = []

    def on_start(run, env):
        starts.append((time.monotonic(), run.key))

    result = {}
    thread = threading.Thread(target=lambda: result.update(report=run_pool(spec, parallel=2, on_start=on_start)))
    thread.start()
    lock, log = victim.run_dir / ".crosstask.lock", victim.run_dir / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    pid = int(lock.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    report = result["report"]
    assert sorted(report.trained) == ["mtl/seed-1", "seg-only/seed-0", "seg-only/seed-1"]
    assert [name for name, _ in report.failed] == ["mtl/seed-0"] and run_status(victim) == "failed"
    assert read_record(victim)["error"] and log_path(spec, victim).is_file()
    kept = log.read_text().splitlines()[1:]
    assert 1 <= len(kept) < 6

    jobs = submit_jobs(spec, submitit.LocalExecutor(folder=tmp_path / "jobs"))
    assert list(jobs) == ["mtl/seed-0"]
    manifest = json.loads((spec.out / "sweep.json").read_text())
    job = jobs["mtl/seed-0"]
    assert {r["variant"]: r.get("job") for r in manifest["runs"] if r["seed"] == 0}["mtl"] == str(job.job_id)
    assert job.result() == "done"
    rows = log.read_text().splitlines()[1:]
    assert len(rows) == 6 and rows[: len(kept)] == kept  # resumed, not retrained
    manifest = json.loads((spec.out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 4
    assert all((r.run_dir / "eval.json").is_file() for r in spec.runs())


@pytest.mark.slow  # two sweep processes over four tiny runs: about 40 s
@pytest.mark.integration
def test_two_sweep_processes_on_one_spec_never_run_the_same_run(tmp_path, synthetic_prepared):
    path = write_spec(tmp_path, synthetic_prepared, epochs=2, seeds=(0, 1))
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen([sys.executable, "-m", "crosstask_cli", "sweep", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    spec = load_spec(path)
    for run in spec.runs():
        name = f"{run.variant}/seed-{run.seed}"
        assert sum(f"done {name} in" in " ".join(o.split()) for o in outputs) == 1, (name, outputs)
        assert len((run.run_dir / "metrics.csv").read_text().splitlines()) == 3  # two epochs, trained once
    manifest = json.loads((spec.out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 4


@pytest.mark.slow  # four tiny runs as four local submitit jobs: about 40 s
@pytest.mark.integration
def test_submitits_local_executor_runs_the_whole_sweep_as_separate_jobs(tmp_path, synthetic_prepared):
    """The path --launcher slurm takes, with submitit's local executor instead of sbatch: one job per run, each
    recording its job id, all four evaluated, and a second submission has nothing left to do."""
    submitit = pytest.importorskip("submitit")
    from crosstask_cli.sweep_launch import submit_jobs

    spec = load_spec(write_spec(tmp_path, synthetic_prepared, epochs=1, seeds=(0, 1)))
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    jobs = submit_jobs(spec, executor)
    assert sorted(jobs) == ["mtl/seed-0", "mtl/seed-1", "seg-only/seed-0", "seg-only/seed-1"]
    assert [job.result() for job in jobs.values()] == ["done"] * 4
    for run in spec.runs():
        record = read_record(run)
        assert record["status"] == "done" and record["job"] == str(jobs[f"{run.variant}/seed-{run.seed}"].job_id)
    manifest = json.loads((spec.out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 4
    assert submit_jobs(spec, executor) == {}
