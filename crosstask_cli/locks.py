"""Exclusive OS locks (``flock``) on lock files: one process at a time trains in a run directory, prepares into an
output folder, runs one sweep run, or rewrites a sweep's manifest.

The operating system releases a lock when its process ends, however it ends, so a lock file left by a dead process
is simply taken over (its PID is kept as ``stale_pid``). The lock file holds the holder's PID, which a refused
process names. The file is removed on release.
"""

from __future__ import annotations

import os
from pathlib import Path


class LockBusy(Exception):
    """Another process holds the lock; ``pid`` is its PID where the lock file names one."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by PID {pid or 'unknown'}")
        self.path, self.pid = path, pid


class FileLock:
    """``FileLock(path).acquire()`` takes the lock on ``path`` (created, with its folder, when missing) or raises
    :class:`LockBusy`; ``acquire(wait=True)`` waits for it instead. Usable as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def acquire(self, wait: bool = False) -> FileLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = read_pid(fd)
                os.close(fd)
                raise LockBusy(self.path, holder) from None
            try:  # the file we locked may have been removed by its previous holder meanwhile: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.stale_pid = read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    def __enter__(self) -> FileLock:
        return self if self.fd is not None else self.acquire()  # ``with FileLock(p).acquire():`` holds it once

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: str | Path) -> int | None:
    """The PID holding the lock on ``path`` (0 when it names none), or None when nobody holds it. Looks without
    taking it for longer than the look."""
    lock = FileLock(path)
    if not lock.path.exists():
        return None
    try:
        lock.acquire()
    except LockBusy as busy:
        return busy.pid or 0
    except OSError:
        return None
    lock.release()
    return None


def read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def lock_beside(folder: str | Path) -> Path:
    """The lock file that guards an output folder replaced by renaming (a prepared dataset, rendered scenes): it
    sits beside the folder, so the lock outlives the folder's replacement."""
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    return folder.parent / f".{folder.name}.crosstask.lock"


def lock_output(folder: str | Path, flag: str = "--out") -> FileLock:
    """Take the lock that guards the output folder ``folder`` (:func:`lock_beside`) for the calling process, or
    refuse in one line naming the process that holds it: two ``prepare`` runs into one folder would each build
    a complete dataset and one would silently replace the other."""
    from crosstask_cli.errors import ConfigError

    try:
        return FileLock(lock_beside(folder)).acquire()
    except LockBusy as busy:
        raise ConfigError(
            f"{flag} {folder} is in use: another crosstask process (PID {busy.pid or 'unknown'}) is writing it; wait "
            "for it to finish or choose another folder"
        ) from None
