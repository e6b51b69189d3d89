"""Reading and encoding image files (OpenCV), with the checks OpenCV leaves out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


MAX_PIXELS = 100_000_000  # predict --max-pixels: 12× a 4K frame, 50× a Cityscapes image


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (after symlinks). A FIFO, device or socket is refused by
    what it is: reading a FIFO waits for a writer forever and ``/dev/zero`` never ends. The check is made on the
    opened file (O_NONBLOCK, so opening a FIFO does not wait either), so the file cannot be swapped in between."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"not a regular file ({special_kind(mode)}); only files are read")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def special_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    import stat

    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))  # fmt: skip
    return next((word for test, word in kinds if test(mode)), "not a plain file")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header, without decoding its pixels (Pillow reads the header only); None
    when Pillow does not know the format (OpenCV may still decode it)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as exc:  # Pillow's own limit (≈179 M pixels) is above ours: too large
        raise ValueError(f"too large to decode ({exc})") from None
    except Exception:  # noqa: BLE001 - an unknown or broken header: left to OpenCV, which reports it
        return None


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any common image file → H×W×3 uint8 RGB (grayscale, RGBA, 16-bit and EXIF orientation handled). Only
    regular files are read (:func:`read_regular_file`); an image of more than ``max_pixels`` pixels is refused from
    its header, before its pixels are decoded. Every refusal is a ValueError saying why."""
    import cv2

    data = read_regular_file(path)
    if not data:
        raise ValueError("empty file")
    check_complete(data)
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ValueError(f"{size[0]}×{size[1]} pixels is more than the limit of {max_pixels:,} (--max-pixels)")
    # ANYDEPTH|ANYCOLOR keeps 16-bit data and applies the EXIF orientation (IMREAD_UNCHANGED would not).
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except (MemoryError, cv2.error) as exc:
        raise ValueError(f"cannot be decoded ({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    if img is None:
        raise ValueError("not a readable image")
    if img.shape[0] * img.shape[1] > max_pixels:  # a format whose header Pillow could not read
        raise ValueError(
            f"{img.shape[1]}×{img.shape[0]} pixels is more than the limit of {max_pixels:,} (--max-pixels)"
        )
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_complete(data: bytes) -> None:
    """Reject truncated JPEG/PNG files, which OpenCV would otherwise decode partially (grey-filled)."""
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise ValueError("truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise ValueError("truncated PNG (no IEND chunk)")


def encode_png(array: np.ndarray) -> bytes:
    """H×W (ids) or H×W×3 RGB uint8 array → PNG bytes."""
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def with_palette(grey_png: bytes, palette: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG (as :func:`encode_png` writes an H×W uint8 array) → the same pixels as an indexed
    colour PNG: value v shows as ``palette[v]`` (N×3 uint8 RGB, N ≤ 256; values beyond it black), the way Pascal
    VOC ships its colour label maps. The compressed image data is reused, so a colour rendering of ids that are
    already encoded costs microseconds. Viewers, OpenCV (BGR) and matplotlib read it as colour; PIL opens it in
    mode "P" (``.convert("RGB")`` for colours)."""
    import struct
    import zlib

    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) > 256:
        raise ValueError(f"a PNG palette holds at most 256 colours, got {len(palette)}")
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    signature, pos, chunks = grey_png[:8], 8, []
    while pos < len(grey_png):
        (length,) = struct.unpack(">I", grey_png[pos : pos + 4])
        chunks.append((grey_png[pos + 4 : pos + 8], grey_png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    if signature != b"\x89PNG\r\n\x1a\n" or not chunks or chunks[0][0] != b"IHDR":
        raise ValueError("not a PNG")
    header = bytearray(chunks[0][1])
    if header[8] != 8 or header[9] != 0:
        raise ValueError(f"expected an 8-bit greyscale PNG (bit depth {header[8]}, colour type {header[9]})")
    header[9] = 3  # indexed colour; the rows' filtering and compression are the same for both types
    out, has_palette = [signature, chunk(b"IHDR", bytes(header))], False
    for kind, data in chunks[1:]:
        if kind in (b"tRNS", b"bKGD", b"sBIT"):  # their greyscale encodings mean something else for indexed colour
            continue
        if kind == b"IDAT" and not has_palette:  # PLTE goes after the colour-space chunks, before the image data
            out.append(chunk(b"PLTE", table.tobytes()))
            has_palette = True
        out.append(chunk(kind, data))
    return b"".join(out)
