"""Method registry: a method name in the config -> its class.

Methods register themselves with ``@register_method("name")``; modules listed in ``_BUILTIN_MODULES`` are
imported on first use so the registry is complete without import side effects elsewhere.
"""
from __future__ import annotations

import importlib

from .base import Method

_METHODS: dict[str, type[Method]] = {}
_BUILTIN_MODULES = (
    "gemsbench.methods.llm_baselines",
    "gemsbench.methods.gems_methods",
    "baselines.popularity",
    "baselines.moe_lora",
    "baselines.hydra_lora",
    "baselines.pcgrad",
    "baselines.shared_encoder",
)


def register_method(name: str):
    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def _load_builtin() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def method_class(name: str) -> type[Method]:
    _load_builtin()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; known methods: {sorted(_METHODS)}. Fix the method name in "
                       "the config (or register a new one with @register_method).")
    return _METHODS[name]


def build_method(name: str, hparams: dict | None = None) -> Method:
    return method_class(name)(hparams)


def known_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)
