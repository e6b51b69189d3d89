"""Figures a person can open: training curves, prediction panels, dataset sample grids (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crosstask_cli.colormaps import DEPTH_CMAP, colorize_depth, depth_range
from crosstask_cli.engine.curves import plot_training_curves
from crosstask_cli.errors import InputError
from crosstask_cli.plotting import pyplot, save_png


def overlay(image: np.ndarray, seg_rgb: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + seg_rgb.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def _legend(fig, class_names: list[str], palette: list, present: set[int] | None = None) -> None:
    from matplotlib.patches import Patch

    idx = [i for i in range(len(class_names)) if present is None or i in present]
    handles = [Patch(color=np.asarray(palette[i]) / 255, label=class_names[i]) for i in idx]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 10),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, -0.01),
    )


def _depth_axis(fig, ax, depth: np.ndarray, kind: str, unit: str, title: str, vrange=None) -> None:
    """A predicted depth map with its colorbar."""
    import matplotlib

    lo, hi = vrange or depth_range(depth, kind)
    ax.imshow(colorize_depth(depth, kind, (lo, hi), mark_invalid=False))
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    sm = matplotlib.cm.ScalarMappable(cmap=DEPTH_CMAP, norm=matplotlib.colors.Normalize(lo, hi))
    cb = fig.colorbar(sm, ax=ax, fraction=0.035, pad=0.02)
    cb.set_label("1 / depth (1/m), bright = near" if kind == "metric" else "inverse depth, bright = near", fontsize=8)
    cb.ax.tick_params(labelsize=7)


def _task_axis(fig, ax, spec, array: np.ndarray, image: np.ndarray, ctx, title: str, vrange=None) -> None:
    """One prediction (or target) of a task drawn on ``ax``: segmentation as an overlay on the image, depth with
    its colour bar, normals as (n + 1)/2 RGB."""
    if spec.name == "seg":
        ax.imshow(overlay(image, spec.colorize(array, ctx)))
        ax.set_title(title, fontsize=10)
    elif spec.name == "depth":
        _depth_axis(fig, ax, array, ctx.depth_kind, "depth", title, vrange)
    else:
        ax.imshow(spec.colorize(array, ctx))
        ax.set_title(title, fontsize=10)
    ax.axis("off")


def prediction_panels(pred_dir: str | Path, out: str | Path, limit: int | None = None) -> list[Path]:
    """One PNG panel per prediction in ``pred_dir`` (image | each task's prediction, plus the transferred ones and
    the energy map when present), written under ``out`` as ``<id>_panel.png``. Input images are found via
    predictions.json."""
    from crosstask_cli.images import read_image
    from crosstask_cli.predictions import energy_name, read_depth, read_manifest
    from crosstask_cli.tasks import TaskContext, get_task, ordered, transfer_file_tag

    plt = pyplot()
    pred_dir, out = Path(pred_dir), Path(out)
    manifest = read_manifest(pred_dir)
    if manifest.format != "crosstask":
        raise InputError(
            f"{pred_dir}: holds {manifest.format}-format predictions (labelIds only); panels need the crosstask "
            "format (`crosstask predict` without --format)"
        )
    names, palette, kind = manifest.class_names, manifest.palette, manifest.depth_kind
    ctx = TaskContext(len(names), 255, tuple(names), tuple(tuple(c) for c in palette), kind)
    tasks = ordered(manifest.tasks)
    written = []
    for rel, src in list(manifest.inputs.items())[:limit]:
        arrays = {(t, ""): get_task(t).read_prediction(pred_dir / get_task(t).prediction_file(rel))
                  for t in tasks}  # fmt: skip
        for s_, t in manifest.transferred:
            tag = transfer_file_tag(s_, t)
            path = pred_dir / get_task(t).prediction_file(rel, tag)
            if path.is_file():
                arrays[(t, tag)] = get_task(t).read_prediction(path)
        shape = next(iter(arrays.values())).shape[:2]
        try:
            image = read_image(Path(src))
        except (OSError, ValueError):
            image = np.zeros((*shape, 3), np.uint8)
        energy_file = pred_dir / energy_name(rel)
        energy = read_depth(energy_file) if energy_file.is_file() else None  # an H×W float32 array too
        cols = 1 + len(arrays) + (energy is not None)
        fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols, 4.2 * shape[0] / shape[1] + 1.0))
        axes[0].imshow(image)
        axes[0].set_title(Path(src).name, fontsize=10)
        axes[0].axis("off")
        vr = depth_range(arrays[("depth", "")], kind) if ("depth", "") in arrays else None
        present: set[int] = set()
        sources = {transfer_file_tag(s_, t): s_ for s_, t in manifest.transferred}
        for ax, ((t, tag), array) in zip(axes[1:], arrays.items(), strict=False):
            spec = get_task(t)
            title = spec.title if not tag else f"{spec.title} from {get_task(sources[tag]).title} (transferred)"
            _task_axis(fig, ax, spec, array, image, ctx, title, vr)
            if t == "seg":
                present |= set(np.unique(array).tolist())
        if energy is not None:
            top = float(np.percentile(energy, 99)) or None
            im = axes[-1].imshow(energy, cmap="magma", vmin=0, vmax=top)
            value = (manifest.energy or {}).get(rel)
            axes[-1].set_title(
                "consistency energy" + (f" (mean {value:.3g})" if value is not None else ""), fontsize=10
            )
            axes[-1].axis("off")
            fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.02)
        if "seg" in tasks:
            _legend(fig, names, palette, present)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out / f"{rel}_panel.png"
        written.append(save_png(fig, path))
        plt.close(fig)
    return written


def sample_grid(
    data: str | Path,
    out: str | Path,
    split: str = "val",
    count: int = 4,
    ckpt: str | Path | None = None,
    device: str = "cpu",
    seed: int | None = None,
) -> Path:
    """A grid of ``count`` dataset samples. Without a checkpoint: the image and each task's ground truth. With
    one: per task the ground truth, the model's prediction and its transferred predictions, and |depth error|."""
    import torch

    from crosstask_cli.data.dataset import PreparedDataset, normalise
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from crosstask_cli.tasks import get_task, ordered

    plt = pyplot()
    ds = PreparedDataset(data, split)
    meta = ds.meta
    ctx = meta.context
    names, palette, kind, unit = meta.class_names, meta.palette, meta.depth_kind, meta.depth_unit
    n = min(count, len(ds))
    idx = (
        list(range(n))
        if seed is None
        else sorted(np.random.default_rng(seed).choice(len(ds), n, replace=False).tolist())
    )
    model = None
    if ckpt is not None:
        c = load_checkpoint(ckpt)
        if c["dataset"]["num_classes"] != meta.num_classes:
            raise InputError(f"{ckpt}: model has {c['dataset']['num_classes']} classes, {data} has {meta.num_classes}")
        model = model_from_checkpoint(c, ckpt).to(device)
    tasks = meta.tasks if model is None else ordered(set(meta.tasks) | set(model.config.tasks))
    pairs = () if model is None else model.config.pairs
    columns = [(t, None) for t in tasks] if model is None else [
        (t, kind_) for t in tasks for kind_ in ("gt", "pred", *(("transfer", s) for s, x in pairs if x == t))
    ]  # fmt: skip
    with_error = model is not None and "depth" in tasks
    cols = 1 + len(columns) + with_error
    h, w = meta.height, meta.width
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols * w / h * 0.5 + 1, 2.6 * n * 0.5 * 2 + 0.8), squeeze=False)
    for r, i in enumerate(idx):
        image, targets = ds.load_sample(i)
        vr = depth_range(targets["depth"], kind) if "depth" in targets else None
        p = None
        if model is not None:
            x = normalise(torch.from_numpy(image))  # the sample already loaded above, not read again
            with torch.inference_mode():
                p = model(x[None].to(device))
        axes[r, 0].imshow(image)
        axes[r, 0].set_title("image" if r == 0 else "", fontsize=9)
        axes[r, 0].axis("off")
        for c_i, (t, what) in enumerate(columns, start=1):
            ax, spec = axes[r, c_i], get_task(t)
            title, array = _grid_cell(spec, what, targets, p, image)
            if array is None:
                ax.imshow(np.full_like(image, 255))
            elif t == "seg":
                ax.imshow(overlay(image, spec.colorize(array, ctx)))
            elif t == "depth":
                ax.imshow(colorize_depth(array, kind, vr, mark_invalid=what in ("gt", None)))
            else:
                ax.imshow(spec.colorize(array, ctx))
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.axis("off")
        if with_error:
            ax = axes[r, -1]
            depth = targets.get("depth")
            dep_p = None if p is None or p.depth is None else get_task("depth").as_array(p.depth[0])
            # no depth head (a segmentation-only model) or no depth target: nothing to compare, a blank tile
            error = (
                np.where(depth > 0, np.abs(dep_p - depth), np.nan)
                if dep_p is not None and depth is not None
                else np.full(image.shape[:2], np.nan)
            )
            im = ax.imshow(error, cmap="viridis")
            ax.set_title("|depth error| (GT valid)" if r == 0 else "", fontsize=9)
            ax.axis("off")
            cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
            cb.ax.tick_params(labelsize=6)
        axes[r, 0].text(
            -0.02, 0.5, ds.files[i], transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=7
        )
    if "seg" in tasks:
        _legend(fig, names, palette)
    fig.suptitle(f"{meta.dataset} · {split} · depth in {unit}: bright = near, grey = no ground truth", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(out)
    save_png(fig, path)
    plt.close(fig)
    return path


def _grid_cell(spec, what, targets: dict, pred, image: np.ndarray) -> tuple[str, np.ndarray | None]:
    """(title, array) of one cell of a sample grid: the ground truth, the prediction or a transferred one (None:
    a blank tile, for a model without that output or data without that target)."""
    from crosstask_cli.tasks import get_task

    t = spec.name
    if what in (None, "gt"):
        return f"ground truth {spec.title}", targets.get(t)
    tensor = pred.direct.get(t) if what == "pred" else pred.transferred.get((what[1], t))
    title = f"predicted {spec.title}" if what == "pred" else f"{spec.title} from {get_task(what[1]).title}"
    return title, None if tensor is None else spec.as_array(tensor[0])


def curves_from_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Training curves of a run directory (from its metrics.csv) into ``out`` (default RUN/plots)."""
    from crosstask_cli.engine.records import read_metrics_log

    run_dir = Path(run_dir)
    csv_path = run_dir / "metrics.csv" if run_dir.is_dir() else run_dir
    if not csv_path.is_file():
        raise InputError(f"{run_dir}: no metrics.csv (is it a crosstask run directory?)")
    records = read_metrics_log(csv_path)
    if not records:
        raise InputError(f"{csv_path}: no epochs logged yet")
    return plot_training_curves(records, Path(out) if out else csv_path.parent / "plots")


SPARSIFICATION_PANELS = (
    ("pixels_seg_error_by_seg_energy", "pixels: seg error rate\nremoved by seg energy"),
    ("pixels_abs_err_by_depth_energy", "pixels: depth abs err\nremoved by depth energy"),
    ("images_1_minus_miou_by_combined", "images: 1 − mIoU\nremoved by combined energy"),
    ("images_abs_err_by_combined", "images: abs err\nremoved by combined energy"),
)


def plot_sparsification(energy: dict, out: str | Path, title: str = "") -> Path:
    """Sparsification plots of an ``eval`` energy report: error of what remains after removing the
    highest-energy pixels/images first, against the oracle (removing the highest errors first) and a random
    order (flat at the mean error). The closer the energy curve is to the oracle, the better energy ranks error."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SPARSIFICATION_PANELS), figsize=(4.2 * len(SPARSIFICATION_PANELS), 3.6))
    for ax, (key, label) in zip(axes, SPARSIFICATION_PANELS, strict=True):
        s = energy["sparsification"][key]
        f = np.asarray(s["fractions"]) * 100
        ax.plot(f, s["curve"], label=f"energy (AUSE {s['ause']:.3g})", color="tab:red")
        ax.plot(f, s["oracle"], label="oracle", color="black", linestyle="--")
        ax.axhline(s["random"], label="random", color="gray", linestyle=":")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("removed (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error of the rest")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_png(fig, Path(out))
