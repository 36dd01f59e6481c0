"""A small synthetic prepared dataset for tests (no MovieLens: its terms forbid derived fixtures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gemsbench.data.build import finish
from gemsbench.data.prepared import load_prepared, write_prepared

WORDS = ["red", "blue", "green", "fast", "slow", "old", "new", "big"]


def make_synthetic(root: Path, n_users: int = 12, n_items: int = 40, events_per_user: int = 14, seed: int = 0,
                   n_negatives: int = 10):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item": np.arange(n_items), "raw_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"{WORDS[i % 8]} thing {i}" for i in range(n_items)],
                          "query": [f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]}" for i in range(n_items)]})
    rows = []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=events_per_user, replace=False)
        tasks = ["rec", "search"] * (events_per_user // 2)
        rng.shuffle(tasks)
        for j, (it, task) in enumerate(zip(chosen, tasks)):
            rows.append((u, int(it), 1000 * u + j, task, items["query"][it] if task == "search" else ""))
    events = pd.DataFrame(rows, columns=["user", "item", "ts", "task", "query"])
    events, splits, stats = finish(items, events, max_history=20, min_history=1, n_negatives=n_negatives, seed=seed)
    write_prepared(root, items, events, splits, stats, {"dataset": "synthetic", "loader": "test"})
    return load_prepared(root)
