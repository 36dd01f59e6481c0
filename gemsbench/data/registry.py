"""Dataset registry: a name in the config -> a function that prepares that dataset.

A preparer has the signature ``prepare(params: dict, out_dir: Path) -> None``, writes a prepared dataset (see
:mod:`gemsbench.data.prepared`) and declares its loader name with ``@register_dataset("name")`` (also there). The
registry imports every module of this package on first use, so a new dataset is one module here, listed nowhere
else.
"""
from __future__ import annotations

import importlib
import pkgutil

from .prepared import Preparer, registered_preparers


def loader_modules() -> list[str]:
    """Every module of the gemsbench.data package, in name order."""
    package = importlib.import_module(__package__)
    return sorted(f"{__package__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))


def _load() -> dict[str, Preparer]:
    for module in loader_modules():
        importlib.import_module(module)
    return registered_preparers()


def get_preparer(loader: str) -> Preparer:
    preparers = _load()
    if loader not in preparers:
        raise KeyError(f"unknown dataset loader {loader!r}; known loaders: {sorted(preparers)}. "
                       "Fix the `loader` of this dataset in the config.")
    return preparers[loader]


def known_loaders() -> list[str]:
    return sorted(_load())
