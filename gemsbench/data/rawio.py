"""Shared helpers of the paper-dataset loaders: locating and reading raw files, checking parameters and
fields, and the paper-style statistics table.

Every error about a raw file names the file, the field and where the data comes from, so a user with a
wrong download knows what to fix without reading the loader.
"""
from __future__ import annotations

import ast
import glob
import gzip
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from .prepared import SPLITS, TASKS, PreparedDataError


def loader_params(loader: str, params: dict, defaults: dict) -> dict:
    """``defaults`` overridden by ``params``; an unknown key is an error (a typo would be ignored otherwise)."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise PreparedDataError(f"unknown {loader} parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **params}


def resolve_files(pattern: str | os.PathLike, root: str | os.PathLike | None, what: str, hint: str) -> list[Path]:
    """The files matching a path or glob (relative to ``root`` when given and the pattern is relative), sorted."""
    path = Path(os.path.expanduser(str(pattern)))
    if root is not None and not path.is_absolute():
        path = Path(os.path.expanduser(str(root))) / path
    files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if not files:
        raise PreparedDataError(f"{what}: no file matches {str(path)!r}. {hint}")
    return files


def require_fields(available: Iterable[str], needed: Iterable[str], file: Path | str, what: str, hint: str) -> None:
    available = list(available)
    missing = [f for f in needed if f not in available]
    if missing:
        raise PreparedDataError(f"{file}: field(s) {missing} missing from {what}, which has {available}. {hint}")


def open_text(path: Path):
    """Open a plain or gzip-compressed text file for reading."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_records(path: Path, hint: str) -> Iterator[dict]:
    """The records of a JSON-lines file, plain or gzipped.

    A line that is not JSON is read as a Python literal with :func:`ast.literal_eval` (never ``eval``): the
    2014 Amazon metadata is written that way (single quotes).
    """
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError) as e:
                    raise PreparedDataError(f"{path}:{line_no}: neither JSON nor a Python literal ({e}). {hint}") from e
            if not isinstance(record, dict):
                raise PreparedDataError(f"{path}:{line_no}: expected one object per line, found "
                                      f"{type(record).__name__}. {hint}")
            yield record


def examples_frame(rows: list[tuple]) -> pd.DataFrame:
    """An example table from rows (user, task, query, history, history_task, history_query, targets, ts),
    with example ids in row order and empty candidates (:func:`.build.add_candidates` fills valid/test)."""
    df = pd.DataFrame(rows, columns=["user", "task", "query", "history", "history_task", "history_query",
                                     "targets", "ts"])
    df.insert(0, "example_id", np.arange(len(df), dtype=np.int64))
    df["candidates"] = [[] for _ in range(len(df))]
    return df


def mean_history_length(splits: dict[str, pd.DataFrame]) -> float:
    """Mean number of history items shown with an example, over the examples of all splits."""
    lengths = [len(h) for split in SPLITS for h in splits[split]["history"]]
    return float(sum(lengths) / max(len(lengths), 1))


def stats_markdown(dataset: str, stats: dict) -> str:
    """The dataset statistics as a paper prints them, the examples per split and task, and how many items each
    rule kept out of the stored negatives (:func:`.build.sample_negatives`)."""
    def n(key: str) -> str:
        return f"{stats[key]:,}"

    lines = [
        f"# {dataset}: dataset statistics",
        "",
        "| Users | Items | Interactions (S) | Interactions (R) | Queries | Avg. history length |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {n('users')} | {n('items')} | {n('search_interactions')} | {n('rec_interactions')} | "
        f"{n('distinct_queries')} | {stats['mean_history_length']:.2f} |",
        "",
        "| Split | " + " | ".join(f"{t} examples" for t in TASKS) + " |",
        "|---|" + "---:|" * len(TASKS),
    ]
    for split in SPLITS:
        lines.append(f"| {split} | " + " | ".join(n(f"{split}_{t}_examples") for t in TASKS) + " |")
    lines += [
        "",
        "Items kept out of the negatives, summed over the valid and test examples, each under the first rule "
        "that applies:",
        "",
        "| The example's targets | Items of the user's events | The user's other interactions |",
        "|---:|---:|---:|",
        f"| {n('negatives_excluded_targets')} | {n('negatives_excluded_user_events')} | "
        f"{n('negatives_excluded_other_interactions')} |",
    ]
    return "\n".join(lines) + "\n"
