"""Figures a person can open: training curves, prediction panels, dataset sample grids (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crosstask_cli.errors import InputError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Draw ``losses.png`` (train and validation loss components) and ``metrics.png`` (validation metrics)
    from metrics.csv rows into ``out_dir``; returns the written paths."""
    from crosstask_cli.atomic import atomic_write

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [int(float(r["epoch"])) for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, keys, title in (
        (axes[0], ("seg", "depth"), "direct losses"),
        (axes[1], ("tseg", "tdepth"), "transferred (consistency) losses"),
        (axes[2], ("seg_task", "depth_task"), "task losses"),
    ):
        for k in keys:
            ax.plot(epochs, series(f"train_{k}"), marker="o", ms=3, label=f"train {k}")
            if rows and f"val_{k}" in rows[0]:
                ax.plot(epochs, series(f"val_{k}"), marker="s", ms=3, ls="--", label=f"val {k}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "losses.png", atomic_write))

    panels = [
        ("val_miou", "mIoU ↑"),
        ("val_pixel_acc", "pixel accuracy ↑"),
        ("val_abs_err", "abs error ↓"),
        ("val_rel_err", "abs rel error ↓"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    split = rows[-1].get("val_split", "val") if rows else "val"
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(epochs, series(key), marker="o", ms=3, color="tab:green" if "↑" in title else "tab:red")
        ax.set_title(f"{title} ({split})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "metrics.png", atomic_write))
    plt.close("all")
    return written


def _save(fig, path: Path, atomic_write, dpi: int = 100) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    return path


DEPTH_CMAP = "magma"
INVALID_RGB = (40, 40, 40)


def depth_display(depth: np.ndarray, kind: str) -> np.ndarray:
    """Map depth to a 'nearness' value for display (bright = near): inverse depth as is, metric inverted."""
    valid = depth > 0
    if kind == "metric":
        return np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
    return np.where(valid, depth, 0.0)


def depth_range(depth: np.ndarray, kind: str) -> tuple[float, float]:
    """Robust display range (2nd–98th percentile of valid pixels) in display units."""
    shown = depth_display(depth, kind)[depth > 0]
    if shown.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(shown, [2, 98])
    return float(lo), float(max(hi, lo + 1e-6))


def colorize_depth(
    depth: np.ndarray, kind: str, vrange: tuple[float, float] | None = None, mark_invalid: bool = True
) -> np.ndarray:
    """H×W depth → H×W×3 uint8 RGB with the perceptual 'magma' colormap, bright = near.

    ``mark_invalid``: ground truth's 0 (no measurement) is drawn dark grey; predictions have no invalid
    pixels, so for them (False) a value ≤ 0 is simply the far end of the scale.
    """
    import matplotlib

    if not mark_invalid:
        floor = 1e-6 if kind == "inverse" else None
        depth = np.maximum(depth, floor) if floor else np.where(depth > 0, depth, np.inf)
    lo, hi = vrange or depth_range(depth, kind)
    norm = np.clip((depth_display(depth, kind) - lo) / (hi - lo), 0, 1)
    rgb = (matplotlib.colormaps[DEPTH_CMAP](norm)[..., :3] * 255 + 0.5).astype(np.uint8)
    if mark_invalid:
        rgb[depth <= 0] = INVALID_RGB
    return rgb


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


def prediction_panels(pred_dir: str | Path, out: str | Path, limit: int | None = None) -> list[Path]:
    """One PNG panel per prediction in ``pred_dir`` (image | seg overlay | depth, plus transferred maps when
    present), written under ``out`` as ``<id>_panel.png``. Input images are found via predictions.json."""
    import json

    import cv2

    from crosstask_cli.atomic import atomic_write
    from crosstask_cli.data.labels import colorize
    from crosstask_cli.predict import MANIFEST, read_image

    plt = _pyplot()
    pred_dir, out = Path(pred_dir), Path(out)
    manifest_path = pred_dir / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"{pred_dir}: no {MANIFEST}; is this a folder written by `crosstask predict`?")
    manifest = json.loads(manifest_path.read_text())
    names, palette, kind = manifest["class_names"], manifest["palette"], manifest["depth_kind"]
    written = []
    for rel, src in list(manifest["inputs"].items())[:limit]:
        labels = cv2.imread(str(pred_dir / f"{rel}_seg.png"), cv2.IMREAD_UNCHANGED)
        depth = np.load(pred_dir / f"{rel}_depth.npy")
        try:
            image = read_image(Path(src))
        except (OSError, ValueError):
            image = np.zeros((*labels.shape, 3), np.uint8)
        has_t = (pred_dir / f"{rel}_seg_transfer.png").is_file()
        cols = 5 if has_t else 3
        fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols, 4.2 * labels.shape[0] / labels.shape[1] + 1.0))
        axes[0].imshow(image)
        axes[0].set_title(Path(src).name, fontsize=10)
        axes[1].imshow(overlay(image, colorize(labels, palette)))
        axes[1].set_title("segmentation", fontsize=10)
        vr = depth_range(depth, kind)
        _depth_axis(fig, axes[2], depth, kind, "depth", "depth", vr)
        present = set(np.unique(labels).tolist())
        if has_t:
            t_labels = cv2.imread(str(pred_dir / f"{rel}_seg_transfer.png"), cv2.IMREAD_UNCHANGED)
            axes[3].imshow(overlay(image, colorize(t_labels, palette)))
            axes[3].set_title("segmentation from depth (transferred)", fontsize=10)
            _depth_axis(
                fig,
                axes[4],
                np.load(pred_dir / f"{rel}_depth_transfer.npy"),
                kind,
                "depth",
                "depth from segmentation (transferred)",
                vr,
            )
            present |= set(np.unique(t_labels).tolist())
        for ax in axes:
            ax.axis("off")
        _legend(fig, names, palette, present)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out / f"{rel}_panel.png"
        written.append(_save(fig, path, atomic_write))
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
    """A grid of ``count`` dataset samples. Without a checkpoint: image, ground-truth seg and depth. With one:
    image, GT seg, predicted seg, transferred seg, GT depth, predicted depth, transferred depth, |depth error|."""
    import torch

    from crosstask_cli.atomic import atomic_write
    from crosstask_cli.data.dataset import PreparedDataset, normalise
    from crosstask_cli.data.labels import colorize
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    plt = _pyplot()
    ds = PreparedDataset(data, split)
    meta = ds.meta
    names, palette, kind, unit = meta["class_names"], meta["palette"], meta["depth"]["kind"], meta["depth"]["unit"]
    n = min(count, len(ds))
    idx = (
        list(range(n))
        if seed is None
        else sorted(np.random.default_rng(seed).choice(len(ds), n, replace=False).tolist())
    )
    model = None
    if ckpt is not None:
        c = load_checkpoint(ckpt)
        if c["dataset"]["num_classes"] != meta["num_classes"]:
            raise InputError(
                f"{ckpt}: model has {c['dataset']['num_classes']} classes, {data} has {meta['num_classes']}"
            )
        model = model_from_checkpoint(c).to(device)
    cols = 8 if model is not None else 3
    h, w = meta["height"], meta["width"]
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols * w / h * 0.5 + 1, 2.6 * n * 0.5 * 2 + 0.8), squeeze=False)
    for r, i in enumerate(idx):
        image, labels, depth = ds.load(i)
        vr = depth_range(depth, kind)
        cells = [("image", image), ("ground truth seg", overlay(image, colorize(labels, palette)))]
        depth_cells = [("ground truth depth", depth)]
        if model is not None:
            x = normalise(torch.from_numpy(image))  # the sample already loaded above, not read again
            with torch.inference_mode():
                p = model(x[None].to(device))
            dep_p = _depth_cell(p.depth, depth.shape)
            cells += [
                ("predicted seg", _seg_cell(p.seg, image, palette)),
                ("transferred seg", _seg_cell(p.seg_from_depth, image, palette)),
            ]
            depth_cells += [
                ("predicted depth", dep_p),
                ("transferred depth", _depth_cell(p.depth_from_seg, depth.shape)),
            ]
        for c_i, (title, img) in enumerate(cells):
            axes[r, c_i].imshow(img)
            axes[r, c_i].set_title(title if r == 0 else "", fontsize=9)
            axes[r, c_i].axis("off")
        for d_i, (title, dmap) in enumerate(depth_cells):
            ax = axes[r, len(cells) + d_i]
            ax.imshow(colorize_depth(dmap, kind, vr, mark_invalid=d_i == 0))
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.axis("off")
        if model is not None:
            ax = axes[r, -1]
            # no depth head (a segmentation-only model): nothing to compare, leave the tile blank
            error = (
                np.where(depth > 0, np.abs(dep_p - depth), np.nan)
                if p.depth is not None
                else np.full(depth.shape, np.nan)
            )
            im = ax.imshow(error, cmap="viridis")
            ax.set_title("|depth error| (GT valid)" if r == 0 else "", fontsize=9)
            ax.axis("off")
            cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
            cb.ax.tick_params(labelsize=6)
        axes[r, 0].text(
            -0.02, 0.5, ds.files[i], transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=7
        )
    _legend(fig, names, palette)
    fig.suptitle(f"{meta['dataset']} · {split} · depth in {unit}: bright = near, grey = no ground truth", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(out)
    _save(fig, path, atomic_write)
    plt.close(fig)
    return path


def _seg_cell(logits, image: np.ndarray, palette) -> np.ndarray:
    """Overlay of a predicted segmentation, or a blank tile for a model without that output."""
    from crosstask_cli.data.labels import colorize
    from crosstask_cli.metrics import class_labels

    if logits is None:
        return np.full_like(image, 255)
    return overlay(image, colorize(class_labels(logits)[0].cpu().numpy().astype(np.uint8), palette))


def _depth_cell(depth, shape) -> np.ndarray:
    return np.zeros(shape, np.float32) if depth is None else depth[0, 0].clamp(min=0).cpu().numpy()


def curves_from_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Training curves of a run directory (from its metrics.csv) into ``out`` (default RUN/plots)."""
    import csv

    run_dir = Path(run_dir)
    csv_path = run_dir / "metrics.csv" if run_dir.is_dir() else run_dir
    if not csv_path.is_file():
        raise InputError(f"{run_dir}: no metrics.csv (is it a crosstask run directory?)")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{csv_path}: no epochs logged yet")
    return plot_training_curves(rows, Path(out) if out else csv_path.parent / "plots")
