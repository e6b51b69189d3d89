"""Colour maps for depth (labels use their dataset palette, data.labels.colorize); no plotting here."""

from __future__ import annotations

import numpy as np

DEPTH_CMAP = "magma"
INVALID_RGB = (40, 40, 40)
RANGE_SAMPLE = 1 << 18


def depth_display(depth: np.ndarray, kind: str) -> np.ndarray:
    """Map depth to a 'nearness' value for display (bright = near): inverse depth as is, metric inverted."""
    valid = depth > 0
    if kind == "metric":
        return np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
    return np.where(valid, depth, 0.0)


def depth_range(depth: np.ndarray, kind: str) -> tuple[float, float]:
    """Robust display range (2nd–98th percentile of valid pixels) in display units. Maps larger than
    :data:`RANGE_SAMPLE` pixels take the percentiles of an evenly strided grid of about that many (a display
    range; a full-size prediction's exact percentiles cost more than the rest of its rendering)."""
    step = max(1, int(np.ceil(np.sqrt(depth.size / RANGE_SAMPLE))))
    sample = depth[::step, ::step] if depth.ndim == 2 else depth
    shown = depth_display(sample, kind)[sample > 0]
    if shown.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(shown, [2, 98])
    return float(lo), float(max(hi, lo + 1e-6))


def depth_palette() -> np.ndarray:
    """256×3 uint8 RGB of :data:`DEPTH_CMAP`."""
    import matplotlib

    return (matplotlib.colormaps[DEPTH_CMAP](np.arange(256))[:, :3] * 255 + 0.5).astype(np.uint8)


def unit_indices(values: np.ndarray) -> np.ndarray:
    """H×W values, 0..1 (clipped; NaN as 0) → H×W uint8 indices into :func:`depth_palette`, as matplotlib indexes
    its 256-entry table (x·256 truncated, 1.0 → the last entry)."""
    return _indices_of_scaled(np.multiply(values, 256.0))  # in the values' precision; ×256 is exact


def _indices_of_scaled(scaled: np.ndarray) -> np.ndarray:
    """``unit_indices`` of values already multiplied by 256, in place (``scaled`` is a scratch array)."""
    np.clip(scaled, 0, 255, out=scaled)
    return np.nan_to_num(scaled, copy=False, nan=0.0).astype(np.uint8)


def colorize_unit(values: np.ndarray) -> np.ndarray:
    """H×W values, 0..1 (clipped; NaN as 0) → H×W×3 uint8 RGB of :data:`DEPTH_CMAP` (without the float64 RGBA
    image that calling the colormap on the whole map builds)."""
    return depth_palette()[unit_indices(values)]


def depth_indices(depth: np.ndarray, kind: str, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """H×W predicted depth → H×W uint8 indices into :func:`depth_palette` (bright = near), in ``vrange`` (display
    units) or :func:`depth_range`. Predictions have no invalid pixels: a value ≤ 0 is the far end of the scale."""
    depth = np.maximum(depth, 1e-6) if kind == "inverse" else np.where(depth > 0, depth, np.inf)
    lo, hi = vrange or depth_range(depth, kind)
    shown = depth if kind == "inverse" else depth_display(depth, kind)  # every pixel valid: display = depth
    # one scratch array through every step: a full-size map is 8 MB per pass
    np.subtract(shown, lo, out=shown)
    np.divide(shown, hi - lo, out=shown)
    return _indices_of_scaled(np.multiply(shown, 256.0, out=shown))


def colorize_depth(
    depth: np.ndarray, kind: str, vrange: tuple[float, float] | None = None, mark_invalid: bool = True
) -> np.ndarray:
    """H×W depth → H×W×3 uint8 RGB with the perceptual 'magma' colormap, bright = near.

    ``mark_invalid``: ground truth's 0 (no measurement) is drawn dark grey; predictions have no invalid
    pixels, so for them (False) a value ≤ 0 is simply the far end of the scale (:func:`depth_indices`).
    """
    if not mark_invalid:
        return depth_palette()[depth_indices(depth, kind, vrange)]
    lo, hi = vrange or depth_range(depth, kind)
    rgb = colorize_unit((depth_display(depth, kind) - lo) / (hi - lo))
    rgb[depth <= 0] = INVALID_RGB
    return rgb
