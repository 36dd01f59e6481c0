"""Method registry: a method name in the config -> its class.

Methods declare their name with ``@register_method("name")`` (:mod:`gemsbench.methods.base`). The registry
imports every module of :data:`METHOD_PACKAGES` on first use — the GEMS methods of this package and every
baseline in ``baselines/`` — so a new method is one module in one of them, listed nowhere else.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Method, registered_methods

#: packages whose every module is imported to find the registered methods
METHOD_PACKAGES = ("gemsbench.methods", "baselines")


def method_modules() -> list[str]:
    """Every module of :data:`METHOD_PACKAGES`, in name order."""
    names = []
    for package in METHOD_PACKAGES:
        path = importlib.import_module(package).__path__
        names += sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(path))
    return names


def _load() -> dict[str, type[Method]]:
    for module in method_modules():
        importlib.import_module(module)
    return registered_methods()


def method_class(name: str) -> type[Method]:
    methods = _load()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; known methods: {sorted(methods)}. Fix the method name in "
                       "the config (or register a new one with @register_method in a module of baselines/).")
    return methods[name]


def build_method(name: str, hparams: dict | None = None) -> Method:
    return method_class(name)(hparams)


def known_methods() -> list[str]:
    return sorted(_load())
