"""Popularity: every item scored by its number of training interactions (both tasks). A sanity floor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gemsbench.atomic import RETRAIN, atomic_write_json, read_json
from gemsbench.methods.base import Method, RunContext, register_method


class PopularityScorer:
    def __init__(self, counts: np.ndarray):
        self.counts = torch.tensor(counts, dtype=torch.float32)

    def score(self, examples: pd.DataFrame) -> torch.Tensor:
        return self.counts.expand(len(examples), -1).clone()


@register_method("popularity")
class Popularity(Method):
    defaults = {}

    def fit(self, ctx: RunContext) -> dict:
        train = ctx.dataset.events[ctx.dataset.events["split"] == "train"]
        counts = np.bincount(train["item"].to_numpy(), minlength=ctx.dataset.n_items)
        atomic_write_json({"counts": counts.tolist()}, Path(ctx.run_dir) / "popularity.json")
        return {"method": self.name, "trainable_parameters": 0, "train_seconds": 0.0,
                "interactions_counted": int(len(train))}

    def load_scorer(self, ctx: RunContext) -> PopularityScorer:
        path = Path(ctx.run_dir) / "popularity.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing; run the train step for this run first")
        return PopularityScorer(np.asarray(read_json(path, RETRAIN.format(run_dir=ctx.run_dir))["counts"]))
