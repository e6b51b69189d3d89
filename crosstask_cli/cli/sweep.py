"""``crosstask sweep``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import CLIError, err, esc, handle_errors, out

HELP = """Train and evaluate every variant × seed of a sweep spec (TOML) that is not finished yet.

The spec names the dataset, an output folder, the seeds, a base configuration (any `train` option by its keyword),
named variants (options that differ) and the evaluation run after training; all of it is checked before the first
run. Runs go to OUT/<variant>/seed-<seed>, each recording its recipe and status there: finished ones (with
eval.json) are skipped, interrupted ones resumed (losing at most their current epoch), and a run trained with
another recipe than the spec's (an edited spec) is refused with the differences (--rerun-changed trains it
afresh). OUT/sweep.json (variant, seed, run dir, status, metrics) is rebuilt from the run directories atomically
whenever a run changes state, so a sweep can be killed and started again at any time, and two sweeps on one spec
never run the same run. `crosstask compare --sweep OUT/sweep.json` turns it into mean ± std tables. Shipped specs:
experiments/*.toml.
"""


@handle_errors
def sweep_command(  # noqa: PLR0913 - a Typer command: one parameter per flag
    spec_file: Path = typer.Argument(..., help="The sweep spec (TOML); see experiments/ for examples."),
    only: list[str] = typer.Option(None, "--only", help="Run only this variant (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (every run and its status) and stop."),
    status: bool = typer.Option(
        False,
        "--status",
        help="Print the table of runs (pending, running with its PID or job id, done, failed with the last error "
        "line) from the run directories, rebuild OUT/sweep.json, and stop; starts nothing.",
    ),
    print_commands: bool = typer.Option(
        False,
        "--print-commands",
        help="Print one `crosstask train … && crosstask eval …` line per run that is not done (new runs with the "
        "full configuration as --set, started ones as --resume) for a scheduler of your own, and stop; the "
        "[prepare] data that is missing comes first, as `crosstask prepare` lines.",
    ),
    launcher: str = typer.Option(
        "serial",
        "--launcher",
        help="serial: one run after another in this process (default). pool: --parallel runs at once on this "
        "machine, each in its own processes with its log in OUT/logs/. slurm: the pending runs as one SLURM job "
        "array through submitit (the spec's [slurm] table; pip install 'crosstask-cli[slurm]'); returns once "
        "submitted, --status follows them.",
    ),
    parallel: int = typer.Option(2, "--parallel", min=1, help="pool: runs at once."),
    gpus_per_run: int = typer.Option(
        0,
        "--gpus-per-run",
        min=0,
        help="pool: GPUs per run (CUDA_VISIBLE_DEVICES; a run of several trains through torchrun); 0: CPU runs, "
        "each with its share of the threads. slurm: overrides the [slurm] table's gpus_per_run.",
    ),
    device: str = typer.Option(None, "--device", help="Device for every run (default: the spec's, else auto)."),
    keep_going: bool = typer.Option(
        False,
        "--keep-going",
        help="serial: record a failing run as failed and go on with the next (pool and slurm always go on).",
    ),
    rerun_changed: bool = typer.Option(
        False,
        "--rerun-changed",
        help="Train afresh (replacing them) the runs whose recipe differs from the spec's; without it such runs "
        "are refused, naming the differences.",
    ),
) -> None:
    from crosstask_cli.sweep import check_recipes, load_spec, prepare_commands, print_plan, run_status, train_command
    from crosstask_cli.sweep_launch import LAUNCHERS

    if dry_run + print_commands + status > 1:
        raise CLIError("give one of --dry-run, --print-commands and --status")
    if launcher not in LAUNCHERS:
        raise CLIError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    spec = load_spec(spec_file)
    runs = spec.runs(only or None)
    if status:
        _print_status(spec)
        return
    if dry_run:
        out.print(f"{len(runs)} runs ({len(spec.variants)} variants × {len(spec.seeds)} seeds) → {esc(spec.out)}")
        print_plan(spec, only or None, write=lambda line: out.print(esc(line), highlight=False))
        return
    if print_commands:
        changed = check_recipes(spec, runs, rerun_changed)
        for line in prepare_commands(spec):
            typer.echo(line)
        for run in runs:
            if run_status(run) != "done" or run.key in changed:
                typer.echo(train_command(spec, run, afresh=run.key in changed))
        return
    if launcher == "slurm":
        _submit(spec, only or None, rerun_changed, gpus_per_run, device)
        return
    if launcher == "pool":
        report = _pool(spec, only or None, parallel, gpus_per_run, device, rerun_changed)
    else:
        report = _serial(spec, only or None, device, keep_going, rerun_changed)
    out.print(
        f"sweep {esc(spec_file)}: {len(report.trained)} run(s) trained in {report.seconds / 60:.1f} min, "
        f"{report.done_before} already done, {len(report.failed)} failed"
        + (f", {len(report.elsewhere)} left to another sweep" if report.elsewhere else "")
        + f"; manifest {esc(Path(spec.out) / 'sweep.json')}"
    )
    for name, reason in report.failed:
        err.print(f"[red]failed[/] {esc(name)}: {esc(reason)}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


def _serial(spec, only, device, keep_going: bool, rerun_changed: bool):
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.sweep import check_recipes, run_status, run_sweep

    runs = spec.runs(only)
    changed = check_recipes(spec, runs, rerun_changed)
    done = sum(run_status(r) == "done" and r.key not in changed for r in runs)
    with Progress(*progress_columns(), console=err) as prog:
        task = prog.add_task("sweep", total=len(runs), completed=done, info="")

        def on_run(run, action: str) -> None:
            prog.update(task, info=f"{action} {run.variant}/seed-{run.seed}")

        def on_result(run, metrics: dict, seconds: float) -> None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            prog.console.print(f"[green]done[/] {esc(run.variant)}/seed-{run.seed} in {seconds:.0f} s  {shown}")
            prog.advance(task)

        return run_sweep(
            spec, only, device, on_run=on_run, on_result=on_result, keep_going=keep_going,
            message=lambda m: prog.console.print(esc(m)), rerun_changed=rerun_changed,
        )  # fmt: skip


def _pool(spec, only, parallel: int, gpus_per_run: int, device, rerun_changed: bool):
    """The pool launcher with one progress line per running job (its slot's GPUs or threads) and the total."""
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.sweep import run_status
    from crosstask_cli.sweep_launch import log_path, run_pool

    runs = spec.runs(only)
    with Progress(*progress_columns(), console=err) as prog:
        total = prog.add_task(f"sweep ×{parallel}", total=len(runs), info="",
                              completed=sum(run_status(r) == "done" for r in runs))  # fmt: skip
        lines: dict = {}

        def on_start(run, env: dict) -> None:
            where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else (
                f"{env.get('OMP_NUM_THREADS', '?')} threads")  # fmt: skip
            lines[run.key] = prog.add_task(f"  {run.variant}/seed-{run.seed}", total=None,
                                           info=f"{where} · log {log_path(spec, run)}")  # fmt: skip

        def on_end(run, status: str, seconds: float) -> None:
            prog.remove_task(lines.pop(run.key))
            colour = {"done": "green", "elsewhere": "yellow"}.get(status, "red")
            prog.console.print(f"[{colour}]{status}[/] {esc(run.variant)}/seed-{run.seed} in {seconds:.0f} s")
            prog.advance(total)

        return run_pool(spec, only, parallel, gpus_per_run, device, rerun_changed, on_start, on_end,
                        message=lambda m: prog.console.print(esc(m)))  # fmt: skip


def _submit(spec, only, rerun_changed: bool, gpus_per_run: int, device) -> None:
    from crosstask_cli.sweep_launch import slurm_executor, submit_jobs

    table = dict(spec.slurm)
    if gpus_per_run:
        table["gpus_per_run"] = gpus_per_run
    executor = slurm_executor(spec, table)
    gpus = int(table.get("gpus_per_run", 0))
    jobs = submit_jobs(spec, executor, only, rerun_changed, gpus, device or ("cuda" if gpus else None))
    ids = {name: str(job.job_id) for name, job in jobs.items()}
    if not ids:
        out.print("nothing to submit: every run is done")
        return
    out.print(f"submitted {len(ids)} run(s) as SLURM job(s) {esc(', '.join(sorted(set(ids.values()))))}; "
              f"follow them with: crosstask sweep {esc(spec.path)} --status")  # fmt: skip


def _print_status(spec) -> None:
    from rich.table import Table

    from crosstask_cli.sweep import rebuild_manifest

    rows = rebuild_manifest(spec)["runs"]
    t = Table(title=f"{spec.path} → {spec.out}", title_justify="left")
    for column in ("run", "status", "job / PID", "time", "metrics or last error"):
        t.add_column(column)
    colours = {"done": "green", "running": "cyan", "failed": "red", "trained": "cyan"}
    for row in rows:
        status = row["status"]
        detail = row.get("error", "") if status == "failed" else "  ".join(
            f"{k} {v:.4f}" for k, v in (row.get("metrics") or {}).items())  # fmt: skip
        who = str(row.get("job") or (f"PID {row['pid']}" if row.get("pid") else ""))
        seconds = f"{row['seconds'] / 60:.1f} min" if row.get("seconds") else ""
        t.add_row(f"{row['variant']}/seed-{row['seed']}", f"[{colours.get(status, 'white')}]{status}[/]", who,
                  seconds, esc(detail))  # fmt: skip
    out.print(t)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "running", "trained", "failed", "pending")}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
