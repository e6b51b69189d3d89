"""Entry point of the ``crosstask`` command. Commands import their heavy modules lazily."""

from __future__ import annotations

import typer

from crosstask_cli import __version__

app = typer.Typer(
    name="crosstask",
    help="Multi-task semantic segmentation + depth with cross-task consistency: prepare data, train, "
    "evaluate, predict and visualize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flags_take_no_value() -> None:
    """Typer's help shows a flag's type (``--force <bool>``) as if the flag took a value; a flag's type column stays
    empty here. Patched once, on the class Typer's help renders every option with (--help included)."""
    from typer.core import TyperOption

    if getattr(TyperOption, "_crosstask_flags", False):
        return
    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich
    TyperOption._crosstask_flags = True


_flags_take_no_value()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crosstask {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show the full traceback of every error, also of the one-line errors about your input "
        "(same as CROSSTASK_DEBUG=1).",
    ),
) -> None:
    """crosstask: cross-task consistency for segmentation + depth."""
    from crosstask_cli.cli.common import DEBUG_FLAG

    DEBUG_FLAG.set(debug)


def _register() -> None:
    from crosstask_cli.cli import (
        bench,
        compare,
        demo,
        evaluate,
        export,
        import_weights,
        info,
        predict,
        prepare,
        sweep,
        train,
        visualize,
    )

    app.add_typer(prepare.app, name="prepare")
    app.command("train", help=train.HELP, no_args_is_help=True)(train.train_command)
    app.command("eval", help=evaluate.HELP)(evaluate.eval_command)
    app.command("predict", help=predict.HELP, no_args_is_help=True)(predict.predict_command)
    app.add_typer(visualize.app, name="visualize")
    app.command("demo", help=demo.HELP)(demo.demo_command)
    app.command("info", help=info.HELP, no_args_is_help=True)(info.info_command)
    app.command("bench", help=bench.HELP)(bench.bench_command)
    app.command("compare", help=compare.HELP, no_args_is_help=True)(compare.compare_command)
    app.command("export", help=export.HELP, no_args_is_help=True)(export.export_command)
    app.command("sweep", help=sweep.HELP, no_args_is_help=True)(sweep.sweep_command)
    app.command("import-weights", help=import_weights.HELP, no_args_is_help=True)(import_weights.import_weights_command)


_register()


def main() -> None:
    app()
