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
def sweep_command(
    spec_file: Path = typer.Argument(..., help="The sweep spec (TOML); see experiments/ for examples."),
    only: list[str] = typer.Option(None, "--only", help="Run only this variant (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (every run and its status) and stop."),
    print_commands: bool = typer.Option(
        False,
        "--print-commands",
        help="Print one `crosstask train … && crosstask eval …` line per run that is not done (new runs with the "
        "full configuration as --set, started ones as --resume) for a scheduler (a Slurm array, torchrun per "
        "node), and stop; the [prepare] data that is missing comes first, as `crosstask prepare` lines.",
    ),
    device: str = typer.Option(None, "--device", help="Device for every run (default: the spec's, else auto)."),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="Record a failing run as failed in the manifest and go on with the next."
    ),
    rerun_changed: bool = typer.Option(
        False,
        "--rerun-changed",
        help="Train afresh (replacing them) the runs whose recipe differs from the spec's; without it such runs "
        "are refused, naming the differences.",
    ),
) -> None:
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.sweep import (
        check_recipes,
        load_spec,
        prepare_commands,
        print_plan,
        run_status,
        run_sweep,
        train_command,
    )

    if dry_run and print_commands:
        raise CLIError("give one of --dry-run and --print-commands")
    spec = load_spec(spec_file)
    runs = spec.runs(only or None)
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

        report = run_sweep(
            spec, only or None, device, on_run=on_run, on_result=on_result, keep_going=keep_going,
            message=lambda m: prog.console.print(esc(m)), rerun_changed=rerun_changed,
        )  # fmt: skip
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
