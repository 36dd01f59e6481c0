"""Locks between processes on one machine or a shared file system (``fcntl.flock`` on a lock file).

The kernel drops a process's locks when it exits, however it exits (SIGKILL included), so a lock never outlives
its holder and no stale lock has to be cleared by hand. The lock file itself stays; it holds the holder's pid
and host, for the message a process gets when it finds the lock taken.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(RuntimeError):
    """The lock is held by another process (and the caller chose not to wait)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing) for the block: exclusive, or ``shared`` with other shared
    holders. Without ``wait``, raise :class:`LockBusy` naming the holder at once when it is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise LockBusy(path, os.pread(fd, 200, 0).decode(errors="replace").strip()) from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
