"""Shared CLI plumbing: consoles, one-line errors instead of tracebacks, Rich progress bars."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager

import typer
from rich.console import Console


def _console(stderr: bool) -> Console:
    # Logs and pipes get a wide console so tables are not squeezed to 80 columns.
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


out = _console(False)
err = _console(True)


class CLIError(Exception):
    """An error to report as one line, with exit code 1."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    # Imported lazily: these modules pull in numpy/torch.
    from crosstask_cli.data.prepared import DatasetError
    from crosstask_cli.engine.checkpoint import CheckpointError
    from crosstask_cli.engine.trainer import NonFiniteLossError, RunDirError

    return (
        CLIError,
        DatasetError,
        CheckpointError,
        RunDirError,
        NonFiniteLossError,
        ValueError,
        FileExistsError,
        FileNotFoundError,
        PermissionError,
        NotADirectoryError,
        IsADirectoryError,
        RuntimeError,
        OSError,
    )


def handle_errors(fn: Callable) -> Callable:
    """Turn expected exceptions into ``error: message`` on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, _expected_errors()):
                # escaped: paths and hints such as "crosstask-cli[onnx]" contain square brackets
                message = esc(str(exc) or type(exc).__name__)
                err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            raise

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
def progress_factory():
    """Yield a ``progress(description, total) -> advance(n)`` factory drawing Rich bars on stderr."""
    from rich.progress import Progress

    with Progress(*progress_columns(), console=err, transient=False) as prog:

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
