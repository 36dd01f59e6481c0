"""The table registry: ``TABLES[name]`` is the :class:`Table` of ``gemsbench/analysis/<name>.py``.

A table says what it reads (its *inputs*: a command-line argument -> an input kind the workflow knows how to
list), which files it writes into the tables folder, which config sections its content depends on, and how it is
made (``make(config, inputs, out_dir)``). The aggregate entry point (``python -m gemsbench.cli.aggregate --table
NAME``) and the one Snakemake rule file for the tables (workflow/rules/tables.smk) read nothing else, so adding a
table is one module defining ``TABLE`` plus one line in :data:`MODULES`.

Input kinds (workflow/rules/tables.smk lists their files):

* ``evaluation`` — evaluation summaries of the main grid's runs;
* ``rows`` — their per-example evaluation rows;
* ``training`` — training summaries of the main grid's runs (their ``train_log.jsonl`` sits beside them);
* ``retention`` — retention JSONs of the LLM runs measured and of their pre-trained backbones;
* ``sensitivity`` — evaluation summaries of the sensitivity runs (and of the base entry's main-grid runs);
* ``<table>/<file>`` — a file another table writes (e.g. ``main/main.csv``).

A table whose listed inputs are empty (no sensitivity grid, no LLM run to measure) is not made.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: the input kinds that are lists of run outputs (the others name another table's file)
RUN_INPUTS = ("evaluation", "rows", "training", "retention", "sensitivity")

#: table name -> the module that defines its TABLE; the order is the order of the aggregate --help listing
MODULES = {
    "significance": "gemsbench.analysis.significance",
    "main": "gemsbench.analysis.main",
    "ablation": "gemsbench.analysis.ablation",
    "efficiency": "gemsbench.analysis.efficiency",
    "conflict": "gemsbench.analysis.conflict",
    "convergence": "gemsbench.analysis.convergence",
    "retention": "gemsbench.analysis.retention",
    "sensitivity": "gemsbench.analysis.sensitivity",
}


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


class _Registry(Mapping):
    """:data:`MODULES` as a mapping name -> Table, each module imported on first use."""

    def __init__(self, modules: Mapping[str, str]):
        self._modules = dict(modules)
        self._loaded: dict[str, Table] = {}

    def __getitem__(self, name: str) -> Table:
        if name not in self._modules:
            raise KeyError(f"unknown table {name!r}; known: {sorted(self._modules)}")
        if name not in self._loaded:
            table = importlib.import_module(self._modules[name]).TABLE
            if table.name != name:
                raise ValueError(f"{self._modules[name]} defines table {table.name!r}, registered as {name!r}")
            self._loaded[name] = table
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


TABLES: Mapping[str, Table] = _Registry(MODULES)
