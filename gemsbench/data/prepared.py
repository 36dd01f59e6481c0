"""Prepared datasets: the on-disk layout every dataset loader writes and every method reads.

A prepared dataset is a directory::

    items.parquet    item (int, 0..n_items-1), raw_id (str), title (str), query (str, may be "")
    events.parquet   user (int), item (int), ts (int), task ("rec"|"search"), query (str, "" for rec),
                     split ("train"|"valid"|"test"), sorted by (user, ts, order of arrival)
    train.parquet    examples, see EXAMPLE_COLUMNS (candidates empty)
    valid.parquet    examples with stored candidates (targets first, then the sampled negatives)
    test.parquet     same as valid
    stats.json       dataset statistics (users, items, interactions, search share, queries, ...)
    meta.json        how it was made: dataset name, loader parameters, seed

Items are internal integer ids; users likewise. An example's ``history`` lists earlier events, oldest
first, each with its task and query (``history_task``/``history_query`` are parallel lists; a loader that
does not know an event's task writes ``""``). A training example sees only train-split events in its
history, a validation example train and valid ones, a test example all earlier events: no evaluation
target ever enters a training input. The training formats (gemsbench/formats.py: prompt, timeline) decide which
history events to show.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..atomic import DamagedFile, atomic_write_json, atomic_write_parquet, read_json

#: a dataset loader: ``prepare(params, out_dir)`` writes a prepared dataset into ``out_dir``
Preparer = Callable[[dict, Path], None]
_PREPARERS: dict[str, Preparer] = {}


def register_dataset(name: str) -> Callable[[Preparer], Preparer]:
    """Function decorator: the preparer is the loader ``name`` of configs (``datasets.<name>.loader``); the
    registry (gemsbench.data.registry) finds it by importing every module of gemsbench.data."""
    def deco(fn: Preparer) -> Preparer:
        if name in _PREPARERS and _PREPARERS[name] is not fn:
            raise ValueError(f"dataset loader {name!r} registered twice")
        _PREPARERS[name] = fn
        return fn
    return deco


def registered_preparers() -> dict[str, Preparer]:
    return dict(_PREPARERS)


TASKS = ("rec", "search")
SPLITS = ("train", "valid", "test")
ITEM_COLUMNS = ("item", "raw_id", "title", "query")
EVENT_COLUMNS = ("user", "item", "ts", "task", "query", "split")
EXAMPLE_COLUMNS = (
    "example_id",  # int, unique within a split
    "user",  # int
    "task",  # "rec" | "search"
    "query",  # str, the search query of the target event ("" for rec)
    "history",  # list[int], earlier items, oldest first
    "history_task",  # list[str], task of each history event ("" if unknown)
    "history_query",  # list[str], query of each history event ("" for rec/unknown)
    "targets",  # list[int], one or more target items
    "candidates",  # list[int], targets followed by sampled negatives (valid/test); [] for train
    "ts",  # int, time of the target event
)
#: the example columns that hold lists
LIST_COLUMNS = ("history", "history_task", "history_query", "targets", "candidates")


class PreparedDataError(ValueError):
    """A prepared dataset or raw input file does not have the expected shape."""


@dataclass
class PreparedDataset:
    """A prepared dataset: its items, statistics and metadata in memory; the events and each split's examples
    read (by ``read``, a file name -> table) on first use, so that a job reads only the tables it needs (an
    evaluation job never reads the training examples, the largest table)."""

    root: Path
    items: pd.DataFrame
    stats: dict
    meta: dict
    read: Callable[[str], pd.DataFrame] = field(repr=False)

    def __post_init__(self) -> None:
        self.splits: Mapping[str, pd.DataFrame] = _Splits(self.read)

    @functools.cached_property
    def events(self) -> pd.DataFrame:
        return self.read("events.parquet")

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def name(self) -> str:
        return self.meta.get("dataset", self.root.name)


class _Splits(Mapping):
    """Split name -> example table, each read once, on first access."""

    def __init__(self, read: Callable[[str], pd.DataFrame]):
        self._read, self._tables = read, {}

    def __getitem__(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise KeyError(f"no split {split!r}; a prepared dataset has {list(SPLITS)}")
        if split not in self._tables:
            df = self._read(f"{split}.parquet")
            for col in LIST_COLUMNS:
                df[col] = df[col].map(np.ndarray.tolist)  # python ints, as the examples were written
            self._tables[split] = df
        return self._tables[split]

    def __iter__(self):
        return iter(SPLITS)

    def __len__(self) -> int:
        return len(SPLITS)


def _require_columns(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PreparedDataError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}. "
                              "Re-run the prepare step for this dataset.")


def validate_examples(df: pd.DataFrame, n_items: int, split: str) -> None:
    """Check the invariants of an example table; raise PreparedDataError naming the first bad row."""
    _require_columns(df, EXAMPLE_COLUMNS, f"{split} examples")
    bad_task = ~df["task"].isin(TASKS)
    if bad_task.any():
        row = df[bad_task].iloc[0]
        raise PreparedDataError(f"{split} example {row.example_id}: task {row.task!r} is not one of {TASKS}")
    for row in df.itertuples(index=False):
        if len(row.targets) == 0:
            raise PreparedDataError(f"{split} example {row.example_id}: no target item")
        if not (len(row.history) == len(row.history_task) == len(row.history_query)):
            raise PreparedDataError(f"{split} example {row.example_id}: history, history_task and "
                                  "history_query have different lengths")
        ids = list(row.targets) + list(row.history) + list(row.candidates)
        if ids and (min(ids) < 0 or max(ids) >= n_items):
            raise PreparedDataError(f"{split} example {row.example_id}: item id out of range 0..{n_items - 1}")
        if split != "train":
            cands = list(row.candidates)
            if cands[: len(row.targets)] != list(row.targets):
                raise PreparedDataError(f"{split} example {row.example_id}: candidates must start with the targets")
            if len(set(cands)) != len(cands):
                raise PreparedDataError(f"{split} example {row.example_id}: duplicate candidates")


def write_prepared(root: Path, items: pd.DataFrame, events: pd.DataFrame, splits: dict[str, pd.DataFrame],
                   stats: dict, meta: dict) -> None:
    """Validate and write a prepared dataset; stats.json is written last and marks completion."""
    root = Path(root)
    _require_columns(items, ITEM_COLUMNS, "items")
    _require_columns(events, EVENT_COLUMNS, "events")
    if list(items["item"]) != list(range(len(items))):
        raise PreparedDataError("items.item must be 0..n_items-1 in order")
    for split in SPLITS:
        validate_examples(splits[split], len(items), split)
    atomic_write_parquet(items[list(ITEM_COLUMNS)], root / "items.parquet")
    atomic_write_parquet(events[list(EVENT_COLUMNS)], root / "events.parquet")
    for split in SPLITS:
        atomic_write_parquet(splits[split][list(EXAMPLE_COLUMNS)], root / f"{split}.parquet")
    atomic_write_json(meta, root / "meta.json")
    atomic_write_json(stats, root / "stats.json")


#: every file of a prepared dataset, stats.json (written last) last
PREPARED_FILES = ("items.parquet", "events.parquet", *(f"{split}.parquet" for split in SPLITS), "meta.json",
                  "stats.json")
PREPARE_HINT = ("run the prepare step again (`snakemake` does, for the dataset's directory under "
                "results_dir/data; or `python -m gemsbench.cli.prepare --config CONFIG --dataset NAME --out DIR`)")


def load_prepared(root: Path) -> PreparedDataset:
    """A prepared dataset from its directory; a missing file, or one that does not read, is an error naming it
    and the fix (preparing the dataset again). Every table's parquet footer is checked here, so damage is
    reported when the dataset is opened; the tables themselves are read when first used."""
    root = Path(root)
    if not (root / "stats.json").exists():
        raise PreparedDataError(f"{root} is not a prepared dataset (no stats.json); {PREPARE_HINT}")
    missing = [name for name in PREPARED_FILES if not (root / name).exists()]
    if missing:
        raise PreparedDataError(f"{root} lacks {missing}: delete the directory and {PREPARE_HINT}")
    remedy = f"delete {root} and {PREPARE_HINT}"

    def damaged(name: str, e: Exception) -> DamagedFile:
        return DamagedFile(root / name, e, remedy)

    def read(name: str) -> pd.DataFrame:
        try:
            return pd.read_parquet(root / name)
        except Exception as e:  # noqa: BLE001 - pyarrow reports damage through many exception types
            raise damaged(name, e) from e

    for name in PREPARED_FILES:
        if name.endswith(".parquet"):
            try:
                pq.read_metadata(root / name)
            except Exception as e:  # noqa: BLE001 - as above
                raise damaged(name, e) from e
    stats, meta = read_json(root / "stats.json", remedy), read_json(root / "meta.json", remedy)
    return PreparedDataset(root, read("items.parquet"), stats, meta, read)
