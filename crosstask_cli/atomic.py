"""Writing files and folders so that readers never see them half-written.

Files: written to a temporary file beside the target, fsynced, then renamed over it. Folders: built in a
temporary sibling folder and renamed into place, an existing one removed only after the rename. Both get the
permissions a plain open()/mkdir() would give (mkstemp/mkdtemp create 0600/0700).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    On any failure the temporary file is removed and an existing ``path`` is left unchanged. An operating-system
    failure (disk full, permission, …), also one that a writer such as ``torch.save`` wraps in its own error, is
    raised as an ``OSError`` that names ``path`` and the cause.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = os_cause(exc)
        if cause is not None and cause.errno is not None:
            unchanged = "the previous file is unchanged" if path.exists() else "nothing was written"
            reason = "no space left on device" if cause.errno == errno.ENOSPC else (cause.strerror or str(cause))
            raise OSError(cause.errno, f"cannot write {path}: {reason}; {unchanged}") from exc
        raise
    _fsync_dir(path.parent)


def os_cause(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or one in its chain (torch.save reports a full disk as a
    RuntimeError raised while handling the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def temp_dir_beside(target: Path) -> Path:
    """A new empty folder next to ``target`` (same filesystem, so it can be renamed onto it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


MARKER_NAMES = ("meta.json", "synthetic.json")  # what makes a folder a finished crosstask output: moved last


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``; an existing ``dst`` is removed only after the move.

    An existing *empty* ``dst`` is kept (it may be a shell's working directory, ``--out .``): the entries of
    ``src`` are renamed into it, the marker file (:data:`MARKER_NAMES`) last, so the folder reads as finished only
    once everything is there."""
    if dst.is_dir() and not dst.is_symlink() and not any(dst.iterdir()):
        for entry in sorted(src.iterdir(), key=lambda e: e.name in MARKER_NAMES):
            os.replace(entry, dst / entry.name)
        src.rmdir()
        _fsync_dir(dst)
        return
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finite_json(obj: object, path: str = "") -> tuple[object, list[str]]:
    """``obj`` with every NaN/±inf float replaced by None (JSON has no such numbers), and the key paths replaced
    (``depth.abs_err``, ``segmentation.per_class_iou.bus``)."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [path]
    if isinstance(obj, dict):
        pairs = [(k, finite_json(v, f"{path}.{k}" if path else str(k))) for k, v in obj.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, ps) in pairs for p in ps]
    if isinstance(obj, (list, tuple)):
        items = [finite_json(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    return obj, []


def atomic_write_json(path: str | Path, obj: object) -> list[str]:
    """Write ``obj`` as strict JSON (NaN/inf become null, see :func:`finite_json`); returns the key paths that were
    not finite, so the caller can say so."""
    import json

    clean, replaced = finite_json(obj)
    atomic_write_text(path, json.dumps(clean, indent=2, allow_nan=False, default=str))
    return replaced
