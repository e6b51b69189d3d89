"""Shared CLI plumbing: consoles, one-line errors instead of tracebacks, Rich progress bars."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from contextlib import contextmanager

import typer
from rich.console import Console

from crosstask_cli.errors import CrosstaskError


def _console(stderr: bool) -> Console:
    # Logs and pipes get a wide console so tables are not squeezed to 80 columns.
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


out = _console(False)
err = _console(True)


AMP_HELP = "Precision: auto (bf16 on CPUs with native bf16 and on bf16 GPUs, else fp32), off (fp32), bf16, fp16."


class CLIError(CrosstaskError):
    """An error in how the command was called, reported as one line with exit code 1."""


# Set by the root callback on every invocation (so one CLI call never sees another's flag).
DEBUG_FLAG: contextvars.ContextVar[bool] = contextvars.ContextVar("crosstask_debug", default=False)


def debug_requested() -> bool:
    """``crosstask --debug …`` or ``CROSSTASK_DEBUG=1``: show tracebacks even for the user's own errors."""
    import os

    return DEBUG_FLAG.get() or os.environ.get("CROSSTASK_DEBUG", "").strip() not in ("", "0")


def handle_errors(fn: Callable) -> Callable:
    """The user's errors (:class:`CrosstaskError`, ``OSError``) become ``error: message`` on stderr, exit code 1,
    no traceback. Anything else is a bug in crosstask (or a failure such as CUDA running out of memory): it
    surfaces with its traceback and exit code 2. ``--debug`` shows the traceback for every error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except (CrosstaskError, OSError) as exc:
            if debug_requested():
                err.print_exception(show_locals=False)
            # escaped: paths and hints such as "crosstask-cli[onnx]" contain square brackets
            message = esc(str(exc) or type(exc).__name__)
            err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception:  # noqa: BLE001 - not the user's input: show everything needed for a bug report
            err.print_exception(show_locals=False)
            err.print(
                "[bold red]internal error[/] (the traceback above): this is not a problem with your input. "
                "Please report it with the command you ran.",
                highlight=False,
            )
            raise typer.Exit(2) from None

    return wrapper


def progress_columns():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@contextmanager
def progress_factory(transient: bool = False):
    """Yield a ``progress(description, total) -> advance(n)`` factory drawing Rich bars on stderr (``transient``:
    removed when done)."""
    from rich.progress import Progress

    with Progress(*progress_columns(), console=err, transient=transient) as prog:

        def factory(description: str, total: int) -> Callable[[int], None]:
            task = prog.add_task(description, total=total, info="")
            return lambda n: prog.advance(task, n)

        yield factory


def esc(value: object) -> str:
    """A value (path, message) made safe to interpolate into Rich markup."""
    from rich.markup import escape

    return escape(str(value))


def fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_sig(value: float, sig: int = 3) -> str:
    """Compact number for narrow tables: 3 significant digits (0.0123, 1.45, 2.1e-05)."""
    if value != value:
        return "–"
    return f"{value:.{sig}g}"
