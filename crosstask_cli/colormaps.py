"""Colour maps for depth (labels use their dataset palette, data.labels.colorize); no plotting here."""

from __future__ import annotations

import numpy as np

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


def _depth_lut() -> np.ndarray:
    """256×3 uint8 RGB of :data:`DEPTH_CMAP`."""
    import matplotlib

    return (matplotlib.colormaps[DEPTH_CMAP](np.arange(256))[:, :3] * 255 + 0.5).astype(np.uint8)


def colorize_unit(values: np.ndarray) -> np.ndarray:
    """H×W values, 0..1 (clipped; NaN as 0) → H×W×3 uint8 RGB of :data:`DEPTH_CMAP`."""
    norm = np.nan_to_num(np.clip(values, 0, 1), nan=0.0)
    # the colormap's own 256-entry table, indexed as matplotlib indexes it (x·N truncated, 1.0 → the last entry),
    # without the float64 RGBA image that calling the colormap on the whole map builds
    return _depth_lut()[np.minimum((norm * 256).astype(np.intp), 255)]


def colorize_depth(
    depth: np.ndarray, kind: str, vrange: tuple[float, float] | None = None, mark_invalid: bool = True
) -> np.ndarray:
    """H×W depth → H×W×3 uint8 RGB with the perceptual 'magma' colormap, bright = near.

    ``mark_invalid``: ground truth's 0 (no measurement) is drawn dark grey; predictions have no invalid
    pixels, so for them (False) a value ≤ 0 is simply the far end of the scale.
    """
    if not mark_invalid:
        floor = 1e-6 if kind == "inverse" else None
        depth = np.maximum(depth, floor) if floor else np.where(depth > 0, depth, np.inf)
    lo, hi = vrange or depth_range(depth, kind)
    rgb = colorize_unit((depth_display(depth, kind) - lo) / (hi - lo))
    if mark_invalid:
        rgb[depth <= 0] = INVALID_RGB
    return rgb
