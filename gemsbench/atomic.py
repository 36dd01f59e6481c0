"""Files one step writes and another reads: the typed atomic writers (text, JSON, parquet, torch) built on
:mod:`gems.atomic` (the one implementation of an atomic write: temporary sibling, flushed, renamed; stale
temporaries of killed writers removed), and the one way to report a file that cannot be read
(:class:`DamagedFile`).

:func:`gemsbench.cli.common.main` turns SIGTERM into ``SystemExit``, so an interrupted step removes its
temporaries like a failed one.

A file can still be damaged by what no write protects against (a full disk, a copy cut short, an edit by hand).
Every reader of a checkpoint, cache or prepared dataset then raises :class:`DamagedFile`: ``PATH is damaged
(reason): remedy``, the remedy naming what to delete and what makes the file again.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

from gems.atomic import atomic_dir, atomic_path, atomic_write, remove_stale_temporaries  # noqa: F401 - re-exported

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
