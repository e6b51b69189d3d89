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

NARROW = 120  # columns: below this, Rich's option tables cut option names ("--ttnet-batch-no…")


def _plain_help_when_narrow() -> None:
    """At fewer than :data:`NARROW` columns, --help is Click's plain layout (every option name whole, its help
    wrapped below it) instead of Rich's panels, whose three columns leave the help too little room. Patched once,
    on the classes every command and group renders its help with."""
    import shutil

    import click
    from typer.core import TyperCommand, TyperGroup

    if getattr(TyperCommand, "_crosstask_narrow", False):
        return
    for cls, plain in ((TyperCommand, click.Command.format_help), (TyperGroup, click.Group.format_help)):
        rich = cls.format_help

        def format_help(self, ctx, formatter, rich=rich, plain=plain):
            if shutil.get_terminal_size().columns >= NARROW:
                return rich(self, ctx, formatter)
            shown = self.help
            self.help = shown and shown.replace("\\[", "[")  # Rich's escape of a literal [ (pip extras)
            try:
                return plain(self, ctx, formatter)
            finally:
                self.help = shown

        cls.format_help = format_help
        cls._crosstask_narrow = True


_plain_help_when_narrow()


def joined(text: str) -> str:
    """Help text with each paragraph on one line, paragraphs still separated by a blank line: Rich keeps the
    source's line breaks, which left words stranded on lines of their own in the command list."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


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
    app.command("train", help=joined(train.HELP), no_args_is_help=True)(train.train_command)
    app.command("eval", help=joined(evaluate.HELP))(evaluate.eval_command)
    app.command("predict", help=joined(predict.HELP), no_args_is_help=True)(predict.predict_command)
    app.add_typer(visualize.app, name="visualize")
    app.command("demo", help=joined(demo.HELP))(demo.demo_command)
    app.command("info", help=joined(info.HELP), no_args_is_help=True)(info.info_command)
    app.command("bench", help=joined(bench.HELP))(bench.bench_command)
    app.command("compare", help=joined(compare.HELP), no_args_is_help=True)(compare.compare_command)
    app.command("export", help=joined(export.HELP), no_args_is_help=True)(export.export_command)
    app.command("sweep", help=joined(sweep.HELP), no_args_is_help=True)(sweep.sweep_command)
    app.command("import-weights", help=joined(import_weights.HELP), no_args_is_help=True)(
        import_weights.import_weights_command
    )


_register()


def main() -> None:
    app()
