"""Atomic file writes: a reader sees either the old content of a file or the complete new one, never a
half-written file.

The content goes to a temporary sibling (same directory, so the rename cannot cross file systems), is flushed to
disk (``fsync``), and is renamed over the target; the directory entry is flushed too. When writing fails or is
interrupted (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary is removed. A process killed
outright (SIGKILL) cannot clean up after itself, so every write first removes the temporaries its target was left
by processes that no longer run.

Temporaries are named ``.{target name}.tmp{pid}``: hidden, never matched by a Snakemake output pattern, and
attributable to the process that made them.

The library's own files (the second-moment cache, :func:`gems.nullspace.save_second_moments`) are written this
way, and so is every file of the benchmark suite (``gemsbench.atomic`` builds its typed writers on these): the one
implementation of an atomic write in the repository.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_TMP = ".tmp"


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}{_TMP}{os.getpid()}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries of ``target`` left by processes that no longer run (a killed writer); return them."""
    target = Path(target)
    prefix = f".{target.name}{_TMP}"
    removed = []
    if not target.parent.is_dir():
        return removed
    for candidate in target.parent.iterdir():
        suffix = candidate.name[len(prefix):] if candidate.name.startswith(prefix) else ""
        if suffix.isdigit() and int(suffix) != os.getpid() and not _running(int(suffix)):
            _remove(candidate)
            removed.append(candidate)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            _fsync(path)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s content to; on leaving the block it replaces ``target``
    (flushed, then renamed); on an exception it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary(target)
    _remove(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(target: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` writes the content to the path it is given; that content then replaces ``target``."""
    with atomic_path(target) as tmp:
        write(tmp)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces the directory ``target`` (flushed, then renamed) when
    the block succeeds; on an exception it is removed and ``target`` is left as it was. Between the removal of
    the old ``target`` and the rename there is an instant without either: a reader then finds nothing, never a
    mix of old and new files."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary(target)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            _remove(target)
        os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        _remove(tmp)
        raise
