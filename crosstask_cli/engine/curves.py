"""Training curves of a run (``RUN/plots/losses.png`` and ``metrics.png``) from its metrics-log rows."""

from __future__ import annotations

from pathlib import Path

from crosstask_cli.engine.records import EpochRecord
from crosstask_cli.plotting import pyplot, save_png


def plot_training_curves(records: list[EpochRecord], out_dir: str | Path) -> list[Path]:
    """Draw ``losses.png`` (train and validation loss components) and ``metrics.png`` (validation metrics)
    from a run's epoch records into ``out_dir``; returns the written paths."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [r.epoch for r in records]
    nan = float("nan")

    def train(key: str) -> list[float]:
        return [r.train.get(key, nan) for r in records]

    def val(key: str) -> list[float]:
        return [r.val.get(key, nan) for r in records]

    from crosstask_cli.tasks import all_specs, get_task, is_transfer_loss

    first = records[0].train if records else {}
    tasks = [s.name for s in all_specs() if s.name in first] or ["seg", "depth"]
    transfers = [k for k in first if is_transfer_loss(k)]
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, keys, title in (
        (axes[0], tasks, "direct losses"),
        (axes[1], transfers or ["tseg", "tdepth"], "transferred (consistency) losses"),
        (axes[2], [f"{t}_task" for t in tasks], "task losses"),
    ):
        for k in keys:
            ax.plot(epochs, train(k), marker="o", ms=3, label=f"train {k}")
            if records and k in records[0].val:
                ax.plot(epochs, val(k), marker="s", ms=3, ls="--", label=f"val {k}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(save_png(fig, out_dir / "losses.png"))

    long = {"miou": "mIoU", "pixel_acc": "pixel accuracy", "abs_err": "abs error", "rel_err": "abs rel error"}
    panels = [
        (m, f"{long.get(m, get_task(t).titles.get(m, m))} {'↑' if get_task(t).directions[m] > 0 else '↓'}")
        for t in tasks
        for m in get_task(t).compared[:2]
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.25 * len(panels), 3.8), squeeze=False)
    axes = axes[0]
    split = records[-1].val_split if records else "val"
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(epochs, val(key), marker="o", ms=3, color="tab:green" if "↑" in title else "tab:red")
        ax.set_title(f"{title} ({split})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(save_png(fig, out_dir / "metrics.png"))
    plt.close("all")
    return written
