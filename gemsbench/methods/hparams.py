"""Types and ranges of hyper-parameters: each method declares one :class:`HParam` per key of its ``defaults``
(``Method.hparam_types``), and every value is checked against it when the method is built and when a config is
loaded (so the DAG refuses a bad value at start-up, naming its config key, instead of a run failing later with
a message from deep inside torch)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class HParamError(ValueError):
    """A hyper-parameter value outside its declared type or range; ``key`` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class HParam:
    """The values one hyper-parameter takes: ``accepts(value)``, and ``description`` for the error message."""

    description: str
    accepts: Callable[[Any], bool]

    def check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            hint = ""
            if isinstance(value, str) and _parses_as_number(value):
                hint = f" (YAML reads {value} as text: write it with a decimal point, e.g. 1.0e-3)"
            raise HParamError(key, f"must be {self.description}, not {value!r}{hint}")


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> tuple[str, Callable]:
    def inside(v: float) -> bool:
        return ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))
    if low is not None and high is not None:
        text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        text = f"{'<' if high_open else '<='} {high:g}"
    else:
        text = ""
    return text, inside


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> HParam:
    """A finite number (an integer will do) in the given interval; ``optional`` also takes None."""
    text, inside = _interval(low, high, low_open, high_open)
    description = f"a finite number {text}".rstrip()
    return HParam(f"None or {description}" if optional else description,
                  lambda v: (optional and v is None) or (_finite(v) and inside(v)))


def integer(low: int | None = None, *, optional: bool = False) -> HParam:
    """An integer >= ``low``; ``optional`` also takes None."""
    description = "an integer" + (f" >= {low}" if low is not None else "")
    return HParam(f"None or {description}" if optional else description,
                  lambda v: (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool)
                                                         and (low is None or v >= low)))


def boolean() -> HParam:
    return HParam("true or false", lambda v: isinstance(v, bool))


def choice(*options: str) -> HParam:
    return HParam(f"one of {list(options)}", lambda v: isinstance(v, str) and v in options)


def numbers(length: int, low: float, high: float, *, high_open: bool = False) -> HParam:
    """A list of ``length`` finite numbers, each in [low, high] (or [low, high))."""
    text, inside = _interval(low, high, False, high_open)
    return HParam(f"a list of {length} numbers {text}",
                  lambda v: isinstance(v, (list, tuple)) and len(v) == length
                  and all(_finite(x) and inside(x) for x in v))


def weights(length: int) -> HParam:
    """A list of ``length`` non-negative finite numbers, not all zero."""
    return HParam(f"a list of {length} numbers >= 0, not all 0",
                  lambda v: isinstance(v, (list, tuple)) and len(v) == length
                  and all(_finite(x) and x >= 0 for x in v) and sum(v) > 0)


def names() -> HParam:
    """A non-empty list of non-empty strings."""
    return HParam("a non-empty list of names",
                  lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                  and all(isinstance(x, str) and x for x in v))


#: the probability-like range of a dropout rate
DROPOUT = number(0, 1, high_open=True)
#: AdamW's hyper-parameters, as torch.optim.AdamW accepts them (betas in [0, 1), the rest >= 0; lr > 0 to train)
ADAMW_TYPES = {"lr": number(0, low_open=True), "weight_decay": number(0), "betas": numbers(2, 0, 1, high_open=True),
               "eps": number(0)}
