"""``crosstask sweep``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosstask_cli.cli.common import CLIError, err, esc, handle_errors, out

HELP = """Train and evaluate every variant × seed of a sweep spec (TOML) that is not finished yet.

The spec names the dataset, an output folder, the seeds, a base configuration (any `train` option by its keyword),
named variants (options that differ) and the evaluation run after training. Runs go to OUT/<variant>/seed-<seed>;
finished ones (with eval.json) are skipped, interrupted ones resumed (losing at most their current epoch), and
OUT/sweep.json (variant, seed, run dir, status, metrics) is rewritten atomically after every run, so a sweep can be
killed and started again at any time. `crosstask compare --sweep OUT/sweep.json` turns it into mean ± std tables.
Shipped specs: experiments/*.toml.
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
) -> None:
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.sweep import load_spec, prepare_commands, print_plan, run_status, run_sweep, train_command

    if dry_run and print_commands:
        raise CLIError("give one of --dry-run and --print-commands")
    spec = load_spec(spec_file)
    runs = spec.runs(only or None)
    if dry_run:
        out.print(f"{len(runs)} runs ({len(spec.variants)} variants × {len(spec.seeds)} seeds) → {esc(spec.out)}")
        print_plan(spec, only or None, write=lambda line: out.print(esc(line), highlight=False))
        return
    if print_commands:
        for line in prepare_commands(spec):
            typer.echo(line)
        for run in runs:
            if run_status(run) != "done":
                typer.echo(train_command(spec, run))
        return
    done = sum(run_status(r) == "done" for r in runs)
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
            message=lambda m: prog.console.print(esc(m)),
        )  # fmt: skip
    out.print(
        f"sweep {esc(spec_file)}: {len(report.trained)} run(s) trained in {report.seconds / 60:.1f} min, "
        f"{report.done_before} already done, {len(report.failed)} failed; manifest {esc(Path(spec.out) / 'sweep.json')}"
    )
    for name, reason in report.failed:
        err.print(f"[red]failed[/] {esc(name)}: {esc(reason)}", highlight=False)
    if report.failed:
        raise typer.Exit(1)
