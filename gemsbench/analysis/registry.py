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
from collections.abc import Iterator, Mapping

from .table import RUN_INPUTS, Table  # noqa: F401 - RUN_INPUTS: the input kinds, read by the rule file

#: table name -> the module that defines its TABLE (a table read by another comes first)
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
