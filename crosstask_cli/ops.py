"""Small tensor operations shared by losses, metrics, prediction and figures."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """B×C×H×W scores → B×H×W int64 class ids: the first maximum, like ``argmax``.

    On CPU, ``max(1).indices`` and ``argmax(1)`` walk the class dimension of an NCHW tensor one element at a
    time, several times slower than a vectorised pass (README "Performance"). Instead: the per-pixel maximum (a
    vectorised reduction), ``score >= max`` as bytes weighted C, C−1, …, 1, and a byte maximum over classes, which
    is C − (first maximising class). A pixel with a NaN score gets class C−1 (``max`` would give the NaN's class).
    """
    c = logits.shape[1]
    if logits.device.type != "cpu" or not logits.is_floating_point() or c > 255:
        return logits.max(1).indices
    x = logits.contiguous()
    weights = torch.arange(c, 0, -1, dtype=torch.uint8).view(1, c, *([1] * (x.ndim - 2)))
    first = torch.ge(x, x.amax(1, keepdim=True)).view(torch.uint8).mul_(weights).amax(1)
    return torch.sub(c, first).clamp_(max=c - 1).long()


def _bilinear_axis(n_out: int, n_in: int) -> tuple[np.ndarray, ...]:
    """One axis of ``F.interpolate(mode="bilinear", align_corners=False)``: output pixel o reads source pixels
    i0 = ⌊s⌋ and min(i0 + 1, n_in − 1) with weight s − i0 on the second, s = max((o + ½)·n_in/n_out − ½, 0).
    Grouped by source cell i0: per cell its output pixels (indices padded to the largest count, a validity mask)
    and their two weights (n_in × r × 2), and each cell's second source pixel."""
    s = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(s.astype(np.intp), n_in - 1)
    second = (s - i0).astype(np.float32)
    count = np.bincount(i0, minlength=n_in)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    pos = np.arange(max(int(count.max()), 1))
    pixels = np.minimum(start[:, None] + pos, n_out - 1)
    valid = pos < count[:, None]
    w1 = np.where(valid, second[pixels], 0.0).astype(np.float32)
    return count, pixels, valid, np.stack([1 - w1, w1], -1), np.minimum(np.arange(n_in) + 1, n_in - 1)


def upsampled_map(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """h×w map (depth, energy; any device) → H×W float32 array of it resized bilinearly (half-pixel centres, as
    :func:`upsampled_class_ids`), clamped at 0."""
    import torch.nn.functional as F

    up = F.interpolate(values[None, None].float(), size=size, mode="bilinear", align_corners=False)
    return up[0, 0].clamp(min=0).cpu().numpy()


def upsampled_class_ids(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """C×h×w logits → H×W uint8 class ids of the bilinearly resized logits (half-pixel centres, as
    ``F.interpolate(..., align_corners=False)``), first maximum on ties.

    On a GPU every class map is resized there. On a CPU only output pixels whose four source pixels disagree on the class are interpolated. Elsewhere the four score
    vectors share their first maximum c, and so does any convex combination of them (every l_c ≥ l_k stays, and
    stays strict for k < c), so the class is c. In a disagreeing cell only classes whose largest corner score
    reaches B = max_k min_corners l_k can win (an interpolated score lies between its corners' extremes), so only
    those are interpolated (two or three, of 19). Exact up to float rounding at near-ties, and at Cityscapes size
    (128×256 logits to 1024×2048, a few per cent of cells on class boundaries) several times faster than resizing
    every class map, which maps that are mostly boundary (noise) still take."""
    import cv2

    c, h, w = logits.shape
    if c == 1:
        return np.zeros(size, np.uint8)
    if logits.device.type != "cpu":
        import torch.nn.functional as F

        up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)
        return up.argmax(1)[0].to(torch.uint8).cpu().numpy()
    scores = logits.float().contiguous()
    low = class_labels(scores[None])[0].numpy().astype(np.uint8)
    edge = np.pad(low, ((0, 1), (0, 1)), mode="edge")
    corner = edge[:-1, :-1]
    mixed = (corner != edge[1:, :-1]) | (corner != edge[:-1, 1:]) | (corner != edge[1:, 1:])
    rows, cols = np.nonzero(mixed)
    if rows.size > 0.25 * mixed.size:
        hwc = np.ascontiguousarray(scores.permute(1, 2, 0).numpy())
        return cv2.resize(hwc, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).argmax(2).astype(np.uint8)
    count_y, pix_y, valid_y, weight_y, next_y = _bilinear_axis(size[0], h)
    count_x, pix_x, valid_x, weight_x, next_x = _bilinear_axis(size[1], w)
    out = np.repeat(np.repeat(low, count_y, 0), count_x, 1)
    if rows.size:
        src = scores.numpy()
        quad = src[:, np.stack([rows, next_y[rows]], 1)[:, :, None], np.stack([cols, next_x[cols]], 1)[:, None, :]]
        flat = quad.reshape(c, -1, 4)  # C × cells × corners
        could_win = flat.max(2) >= flat.min(2).max(0)
        n = int(could_win.sum(0).max())
        # each cell's candidate classes in ascending order (so the first maximum stays the lowest class), padded
        # with classes that cannot win
        ids = np.arange(c)[:, None]
        classes = np.argsort(np.where(could_win, ids, ids + c), axis=0, kind="stable")[:n]  # n × cells
        quad = np.take_along_axis(quad, classes[:, :, None, None], 0).transpose(1, 0, 2, 3)  # cells × n × 2 × 2
        across = np.einsum("knab,kxb->knax", quad, weight_x[cols], optimize=True)
        block = np.ascontiguousarray(np.einsum("kya,knax->knyx", weight_y[rows], across, optimize=True))
        best = class_labels(torch.from_numpy(block)).numpy()  # cells × r_y × r_x, index into ``classes``
        best = classes.T[np.arange(len(rows))[:, None, None], best].astype(np.uint8)
        keep = valid_y[rows][:, :, None] & valid_x[cols][:, None, :]
        out[np.broadcast_to(pix_y[rows][:, :, None], keep.shape)[keep],
            np.broadcast_to(pix_x[cols][:, None, :], keep.shape)[keep]] = best[keep]  # fmt: skip
    return out
