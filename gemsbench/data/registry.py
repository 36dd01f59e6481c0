"""Dataset registry: a name in the config -> a function that prepares that dataset.

A preparer has the signature ``prepare(params: dict, out_dir: Path) -> None`` and writes a prepared dataset
(see :mod:`gemsbench.data.prepared`). Registering a new dataset needs no change to the harness.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

Preparer = Callable[[dict, Path], None]
_PREPARERS: dict[str, Preparer] = {}


def register_dataset(name: str):
    def deco(fn: Preparer) -> Preparer:
        if name in _PREPARERS:
            raise ValueError(f"dataset loader {name!r} registered twice")
        _PREPARERS[name] = fn
        return fn
    return deco


def _load_builtin() -> None:
    # Importing the modules registers their loaders.
    from . import movielens  # noqa: F401
    from . import qilin  # noqa: F401
    from . import amazon  # noqa: F401


def get_preparer(loader: str) -> Preparer:
    _load_builtin()
    if loader not in _PREPARERS:
        raise KeyError(f"unknown dataset loader {loader!r}; known loaders: {sorted(_PREPARERS)}. "
                       "Fix the `loader` of this dataset in the config.")
    return _PREPARERS[loader]


def known_loaders() -> list[str]:
    _load_builtin()
    return sorted(_PREPARERS)
