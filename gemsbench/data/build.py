"""Shared steps of every loader: leave-one-out splits, examples, stored negatives, statistics.

A loader turns its raw files into an event table (user, item, ts, task, query) with dense integer ids and
calls :func:`finish` — so every dataset gets the same split rule, the same negative sampling and the same
statistics, and a new dataset is only a reader of raw files.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .prepared import SPLITS, TASKS, PreparedDataError

_SPLIT_RANK = {"train": 0, "valid": 1, "test": 2}
# What keeps an item out of an example's negatives, in the order the rules are applied (see sample_negatives).
EXCLUSION_RULES = ("targets", "user_events", "other_interactions")


def filter_min_events_per_task(events: pd.DataFrame, min_per_task: int, tasks=TASKS) -> pd.DataFrame:
    """Keep users with at least ``min_per_task`` events of each of ``tasks`` (leave-one-out needs 3: train,
    valid, test); a dataset with one task only (e.g. all-search Amazon) passes that task alone."""
    counts = events.groupby(["user", "task"]).size().unstack(fill_value=0)
    for task in tasks:
        if task not in counts.columns:
            counts[task] = 0
    keep = counts.index[(counts[list(tasks)] >= min_per_task).all(axis=1)]
    return events[events["user"].isin(keep)]


def densify(events: pd.DataFrame, items: pd.DataFrame,
            other: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, set]]:
    """Re-number users and the items that remain as 0..n-1 (items in raw-id order of ``items``).

    ``other`` holds (user, item) interactions that are no events (e.g. ratings under a threshold); they are
    returned as {user: items} in the new numbering, so that no negative is an item the user interacted with.
    Pairs of a user or an item that does not remain are dropped.
    """
    used = items[items["item"].isin(events["item"].unique())].reset_index(drop=True)
    item_map = pd.Series(np.arange(len(used)), index=used["item"].to_numpy())
    users = np.sort(events["user"].unique())
    user_map = pd.Series(np.arange(len(users)), index=users)
    events = events.assign(item=item_map.loc[events["item"].to_numpy()].to_numpy(),
                           user=user_map.loc[events["user"].to_numpy()].to_numpy())
    used = used.assign(item=np.arange(len(used)))
    other_items: dict[int, set] = {}
    if other is not None:
        other = other[other["user"].isin(user_map.index) & other["item"].isin(item_map.index)]
        for user, item in zip(user_map.loc[other["user"].to_numpy()], item_map.loc[other["item"].to_numpy()]):
            other_items.setdefault(int(user), set()).add(int(item))
    return events, used, other_items


def assign_loo_splits(events: pd.DataFrame) -> pd.DataFrame:
    """Leave-one-out per user and task by time: last event -> test, second last -> valid, rest -> train.

    ``events`` must be sorted by (user, ts) with a stable order for ties; the order is kept.
    """
    events = events.reset_index(drop=True)
    rank_from_end = events.groupby(["user", "task"]).cumcount(ascending=False)
    split = np.where(rank_from_end == 0, "test", np.where(rank_from_end == 1, "valid", "train"))
    return events.assign(split=split)


def build_examples(events: pd.DataFrame, max_history: int, min_history: int = 1) -> dict[str, pd.DataFrame]:
    """One example per event; its history is the earlier events of its own or an earlier split.

    A training example sees only train events, a validation example train and valid ones, a test example
    all earlier events, so no evaluation target ever appears in a training input. Training events with
    fewer than ``min_history`` visible earlier events are dropped; evaluation examples are always kept.
    """
    rows: dict[str, list] = {s: [] for s in SPLITS}
    for user, grp in events.groupby("user", sort=True):
        items = grp["item"].to_numpy()
        tasks = grp["task"].to_numpy()
        queries = grp["query"].to_numpy()
        splits = grp["split"].to_numpy()
        ts = grp["ts"].to_numpy()
        ranks = np.array([_SPLIT_RANK[s] for s in splits])
        for i in range(len(items)):
            visible = np.nonzero(ranks[:i] <= ranks[i])[0][-max_history:] if i else np.zeros(0, dtype=int)
            if splits[i] == "train" and len(visible) < min_history:
                continue
            rows[splits[i]].append((
                int(user), str(tasks[i]), str(queries[i]),
                [int(x) for x in items[visible]], [str(x) for x in tasks[visible]],
                [str(x) for x in queries[visible]], [int(items[i])], int(ts[i])))
    out = {}
    for split in SPLITS:
        df = pd.DataFrame(rows[split], columns=["user", "task", "query", "history", "history_task",
                                                "history_query", "targets", "ts"])
        df.insert(0, "example_id", np.arange(len(df), dtype=np.int64))
        df["candidates"] = [[] for _ in range(len(df))]
        out[split] = df
    return out


def sample_negatives(examples: pd.DataFrame, n_items: int, user_events: dict[int, set], other_items: dict[int, set],
                     n_negatives: int, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Store ``targets + n_negatives`` candidates per example: negatives uniform over the items the user never
    interacted with, sampled once with a fixed seed.

    An item is excluded by the first of the rules of :data:`EXCLUSION_RULES` that applies: it is one of the
    example's targets, an item of one of the user's events (any split, either task), or one of ``other_items``
    (the user's interactions that are no events, e.g. Qilin's history-list notes). Returns the examples and,
    per rule, how many items it excluded, summed over the examples.
    """
    rng = np.random.default_rng(seed)
    excluded_by = dict.fromkeys(EXCLUSION_RULES, 0)
    candidates = []
    for row in examples.itertuples(index=False):
        excluded: set = set()
        for rule, rule_items in zip(EXCLUSION_RULES, (set(row.targets), user_events.get(row.user, set()),
                                                      other_items.get(row.user, set()))):
            excluded_by[rule] += len(rule_items - excluded)
            excluded |= rule_items
        if not excluded.issuperset(row.history):
            raise ValueError(f"example {row.example_id} of user {row.user}: history items "
                             f"{sorted(set(row.history) - excluded)} are neither events nor other interactions of "
                             "the user; the loader must pass every item a user interacted with (other_items)")
        if n_items - len(excluded) < n_negatives:
            raise PreparedDataError(f"user {row.user} has interacted with too many of the {n_items} items to "
                                  f"sample {n_negatives} negatives; lower num_negatives")
        negs: list[int] = []
        seen = set(excluded)
        while len(negs) < n_negatives:
            draw = rng.integers(0, n_items, size=2 * (n_negatives - len(negs)) + 8)
            for x in draw.tolist():
                if x not in seen:
                    seen.add(x)
                    negs.append(x)
                    if len(negs) == n_negatives:
                        break
        candidates.append(list(row.targets) + negs)
    return examples.assign(candidates=candidates), excluded_by


def compute_stats(items: pd.DataFrame, events: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> dict:
    search = events[events["task"] == "search"]
    stats = {
        "users": int(events["user"].nunique()),
        "items": int(len(items)),
        "interactions": int(len(events)),
        "search_interactions": int(len(search)),
        "rec_interactions": int((events["task"] == "rec").sum()),
        "search_share": float(len(search) / max(len(events), 1)),
        "distinct_queries": int(search["query"].nunique()),
        "density": float(len(events) / max(events["user"].nunique() * len(items), 1)),
        "mean_events_per_user": float(events.groupby("user").size().mean()),
    }
    for split, df in splits.items():
        for task in TASKS:
            stats[f"{split}_{task}_examples"] = int((df["task"] == task).sum())
    return stats


def finish(items: pd.DataFrame, events: pd.DataFrame, *, max_history: int, min_history: int,
           n_negatives: int, seed: int,
           other_items: dict[int, set] | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict]:
    """Split, build examples, sample stored negatives and compute statistics for a dense event table
    (``other_items``: see :func:`add_candidates`)."""
    events = events.sort_values(["user", "ts"], kind="stable").reset_index(drop=True)
    events = assign_loo_splits(events)
    splits = build_examples(events, max_history=max_history, min_history=min_history)
    splits, excluded = add_candidates(splits, events, len(items), n_negatives, seed, other_items)
    return events, splits, {**compute_stats(items, events, splits), **excluded}


def add_candidates(splits: dict[str, pd.DataFrame], events: pd.DataFrame, n_items: int, n_negatives: int,
                   seed: int, other_items: dict[int, set] | None = None) -> tuple[dict[str, pd.DataFrame], dict]:
    """Stored candidates for the valid and test examples (seeds ``seed + 1`` and ``seed + 2``), excluding every
    item of the user's events and of ``other_items`` ({user: items the user interacted with outside the
    events}); for loaders that build their own examples (multi-target, release rules) too.

    Returns the splits and the statistics ``negatives_excluded_<rule>`` of :func:`sample_negatives`, summed
    over the valid and test examples.
    """
    user_events = events.groupby("user")["item"].agg(set).to_dict()
    splits = dict(splits)
    excluded = dict.fromkeys(EXCLUSION_RULES, 0)
    for offset, split in enumerate(("valid", "test"), start=1):
        splits[split], by_rule = sample_negatives(splits[split], n_items, user_events, other_items or {},
                                                  n_negatives, seed + offset)
        for rule, n in by_rule.items():
            excluded[rule] += n
    return splits, {f"negatives_excluded_{rule}": n for rule, n in excluded.items()}
