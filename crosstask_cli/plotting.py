"""Matplotlib without a display, and figures written atomically as PNG."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (a reader never sees half a file)."""
    from crosstask_cli.atomic import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    return path
