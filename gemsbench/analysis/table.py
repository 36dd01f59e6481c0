"""What a results table is (:class:`Table`): what it reads, what it writes, and the function that makes it.
Every table module (gemsbench/analysis/<name>.py) defines one as ``TABLE``; the registry (:mod:`.registry`) names
them. The input kinds are listed in the registry's docstring."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: the input kinds that are lists of run outputs (the others name another table's file)
RUN_INPUTS = ("evaluation", "rows", "training", "retention", "sensitivity")


@dataclass(frozen=True)
class Table:
    """One results table: what it reads, what it writes, and the function that makes it."""

    name: str
    #: command-line argument (``--<arg>``) -> input kind (module docstring)
    inputs: Mapping[str, str]
    #: file names written into the tables folder
    outputs: tuple[str, ...]
    #: ``make(config, inputs, out_dir)``: ``inputs`` maps each given argument to its paths; returns a one-line
    #: description of what was written
    make: Callable[[dict, dict[str, list[Path]], Path], str]
    #: config sections (top-level keys) the content depends on: a change re-makes the table
    config_keys: tuple[str, ...] = ()
    #: arguments that may be left out (the others are required)
    optional: frozenset[str] = field(default_factory=frozenset)
    #: the output shown in the Snakemake report (its caption: workflow/report/table_<name>.rst)
    report: str | None = None

    def __post_init__(self) -> None:
        for arg, kind in self.inputs.items():
            if kind not in RUN_INPUTS and "/" not in kind:
                raise ValueError(f"table {self.name!r}: input {arg!r} has kind {kind!r}; use one of {RUN_INPUTS} "
                                 "or '<table>/<file>'")
        if self.report is not None and self.report not in self.outputs:
            raise ValueError(f"table {self.name!r}: report file {self.report!r} is not among its outputs")

    def check_inputs(self, given: Mapping[str, list]) -> None:
        """A ValueError naming the argument when a required input is missing or one is unknown."""
        unknown = sorted(arg for arg, paths in given.items() if paths and arg not in self.inputs)
        if unknown:
            raise ValueError(f"--table {self.name} takes {sorted(self.inputs)}, not {unknown}")
        missing = [arg for arg in self.inputs if arg not in self.optional and not given.get(arg)]
        if missing:
            raise ValueError(f"--table {self.name} needs --{missing[0]} ({self.inputs[missing[0]]} files)")
