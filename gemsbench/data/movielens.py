"""The embedded default: MovieLens-100K from the installed ``recbole`` package, with semi-synthetic search.

MovieLens has no queries, so search is made the way product-search benchmarks on Amazon make it (HEM /
Van Gysel): each item gets one query from its metadata — its genres and release decade, e.g.
``"comedy romance nineties"`` (decades as words: SmolLM2 spells digits one token each) — and a seeded rule marks which interactions are search ones: each interaction
independently with probability ``search_share`` (default 0.35), drawn from ``numpy.random.default_rng(seed)``
in the order of the raw file. The queries are synthetic; they are the only thing a search example has that a
recommendation example does not. Ratings under ``min_rating`` are no events, but the user did watch the film:
it is never one of their stored negatives.

The MovieLens terms forbid redistribution: it is read from the installed package at run time and only the
prepared files under the results directory (never committed) are written.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from .build import densify, filter_min_events_per_task, finish
from .prepared import PreparedDataError, register_dataset, write_prepared

DEFAULTS = {"search_share": 0.35, "seed": 42, "max_history": 20, "min_history": 1, "num_negatives": 99,
            "min_events_per_task": 3, "min_rating": 0, "max_users": 0}


def movielens_dir() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise PreparedDataError("MovieLens-100K is read from the `recbole` package, which is not installed; "
                              "install it with `pip install --no-deps recbole==1.2.1`")
    root = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    missing = [f for f in ("ml-100k.inter", "ml-100k.item") if not (root / f).exists()]
    if missing:
        raise PreparedDataError(f"the installed recbole package lacks {missing} under {root}; reinstall it with "
                              "`pip install --no-deps --force-reinstall recbole==1.2.1`")
    return root


DECADE_WORDS = {1910: "tens", 1920: "twenties", 1930: "thirties", 1940: "forties", 1950: "fifties",
                1960: "sixties", 1970: "seventies", 1980: "eighties", 1990: "nineties", 2000: "noughties"}


def item_query(genres: str, year) -> str:
    """The synthetic query of a movie: its genres, lower-cased, and its release decade as a word."""
    words = [g.lower() for g in str(genres).split() if g and g != "nan"]
    try:
        decade = int(float(year)) // 10 * 10
        words.append(DECADE_WORDS.get(decade, f"{decade}s"))
    except (TypeError, ValueError):
        pass
    return " ".join(words) if words else "movie"


def read_movielens(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = pd.read_csv(root / "ml-100k.inter", sep="\t")
    item = pd.read_csv(root / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    item.columns = [c.split(":")[0] for c in item.columns]
    needed = {"user_id", "item_id", "rating", "timestamp"}
    if not needed <= set(inter.columns) or not {"item_id", "movie_title", "release_year", "class"} <= set(item.columns):
        raise PreparedDataError(f"unexpected MovieLens columns in {root}: {list(inter.columns)} / {list(item.columns)}")
    return inter, item


@register_dataset("movielens")
def prepare_movielens(params: dict, out_dir: Path) -> None:
    p = {**DEFAULTS, **params}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise PreparedDataError(f"unknown movielens parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    inter, item = read_movielens(movielens_dir())
    below = inter[inter["rating"] < p["min_rating"]]  # interactions all the same: never negatives of their user
    inter = inter[inter["rating"] >= p["min_rating"]]
    rng = np.random.default_rng(p["seed"])
    is_search = rng.random(len(inter)) < p["search_share"]
    items = pd.DataFrame({
        "item": item["item_id"].astype(int),
        "raw_id": item["item_id"].astype(str),
        "title": item["movie_title"].str.strip(),
        "query": [item_query(g, y) for g, y in zip(item["class"], item["release_year"])],
    }).sort_values("item").reset_index(drop=True)
    query_of = dict(zip(items["item"], items["query"]))
    events = pd.DataFrame({
        "user": inter["user_id"].astype(int).to_numpy(),
        "item": inter["item_id"].astype(int).to_numpy(),
        "ts": inter["timestamp"].astype(np.int64).to_numpy(),
        "task": np.where(is_search, "search", "rec"),
    })
    events["query"] = [query_of[i] if t == "search" else "" for i, t in zip(events["item"], events["task"])]
    events = filter_min_events_per_task(events, p["min_events_per_task"])
    if p["max_users"]:  # a seeded subsample of users, for quick runs and tests
        users = np.sort(events["user"].unique())
        keep = np.random.default_rng(p["seed"]).choice(users, size=min(p["max_users"], len(users)), replace=False)
        events = events[events["user"].isin(keep)]
    events, items, other_items = densify(events, items, pd.DataFrame({"user": below["user_id"].astype(int),
                                                                       "item": below["item_id"].astype(int)}))
    events, splits, stats = finish(items, events, max_history=p["max_history"], min_history=p["min_history"],
                                   n_negatives=p["num_negatives"], seed=p["seed"], other_items=other_items)
    meta = {"dataset": "movielens-100k", "loader": "movielens", "params": p,
            "source": "recbole==1.2.1 dataset_example/ml-100k",
            "search_rule": "each interaction is a search one with probability search_share (seeded)"}
    write_prepared(out_dir, items, events, splits, stats, meta)
