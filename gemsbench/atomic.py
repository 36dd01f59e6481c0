"""Files one step writes and another reads: the one way to write them (atomically), and the one way to report
one that cannot be read (:class:`DamagedFile`).

A reader sees either the old content or the complete new one, never a half-written file: the content goes to a
temporary sibling (same directory, so the rename cannot cross file systems), is flushed to disk (``fsync``), and
is renamed over the target; the directory entry is flushed too. When writing fails or is interrupted
(``KeyboardInterrupt`` and ``SystemExit`` included: :func:`gemsbench.cli.common.main` turns SIGTERM into the
latter) the temporary is removed. A process killed outright (SIGKILL) cannot clean up after itself, so every
write first removes the temporaries its target was left by processes that no longer run.

Temporaries are named ``.{target name}.tmp{pid}``: hidden, never matched by a Snakemake output pattern, and
attributable to the process that made them.

A file can still be damaged by what no write protects against (a full disk, a copy cut short, an edit by hand).
Every reader of a checkpoint, cache or prepared dataset then raises :class:`DamagedFile`: ``PATH is damaged
(reason): remedy``, the remedy naming what to delete and what makes the file again.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_TMP = ".tmp"


#: the remedy for a damaged output of a run's train step (``.format(run_dir=...)``)
RETRAIN = ("delete it and {run_dir}/summary.json, then train the run again (`snakemake` retrains a run whose "
           "summary.json is gone; or `python -m gemsbench.cli.train ...`)")


class DamagedFile(ValueError):
    """A file exists but cannot be read: ``{path} is damaged ({reason}): {remedy}``. An exception as the reason
    gives its type and first line."""

    def __init__(self, path: str | os.PathLike, reason: str | BaseException, remedy: str):
        if isinstance(reason, BaseException):
            lines = str(reason).strip().splitlines()
            reason = f"{type(reason).__name__}: {lines[0][:200]}" if lines else type(reason).__name__
        super().__init__(f"{path} is damaged ({reason}): {remedy}")
        self.path = Path(path)


def read_json(path: str | os.PathLike, remedy: str):
    """The JSON document at ``path``; one that does not parse is a :class:`DamagedFile`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(path, e, remedy) from e


def torch_load(path: str | os.PathLike, remedy: str, map_location=None):
    """A file written by :func:`atomic_torch_save`, loaded with ``weights_only=True``: tensors and plain values
    only. Anything else — a damaged file, or one holding other objects (whose unpickling could run code) — is a
    :class:`DamagedFile`; it is never loaded in full. A missing file stays a FileNotFoundError."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise DamagedFile(path, "it holds objects other than tensors and plain values, which are never loaded",
                              remedy) from e
        raise DamagedFile(path, e, remedy) from e
    except Exception as e:  # noqa: BLE001 - torch reports a damaged file through many exception types
        raise DamagedFile(path, e, remedy) from e


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


def atomic_write_text(text: str, target: str | os.PathLike) -> None:
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(obj, target: str | os.PathLike) -> None:
    """``obj`` as indented JSON with sorted keys (numpy scalars and paths as plain values)."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", target)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_parquet(df, target: str | os.PathLike) -> None:
    """A pandas DataFrame as parquet, without its index."""
    atomic_write(target, lambda tmp: df.to_parquet(tmp, index=False))


def atomic_torch_save(obj, target: str | os.PathLike) -> None:
    """``torch.save(obj)`` (tensors and plain values: loadable with ``weights_only=True``)."""
    import torch

    atomic_write(target, lambda tmp: torch.save(obj, tmp))


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
