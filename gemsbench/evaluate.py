"""Evaluation of any scorer on the stored candidates (sampled protocol) and on the whole catalogue (full).

* ``sampled`` (the paper's): rank the target(s) among the example's stored candidates (targets + 99
  negatives sampled once, identical for every method).
* ``full``: rank the target(s) among all items, with the example's history items removed from the ranking
  (the user has already interacted with them), targets always kept.

Writes one row per example and protocol (``example_id, user, task, protocol`` + metrics) so significance
tests can pair methods over the same examples, and a summary (mean per protocol and task).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .metrics import DEFAULT_KS, metric_names, metrics_from_ranks, target_ranks

PROTOCOLS = ("sampled", "full")


def sampled_candidates(scores: torch.Tensor, chunk: pd.DataFrame):
    """(candidate scores, is-target mask, valid mask) of the sampled protocol: each row's stored candidates."""
    cands = [list(c) for c in chunk["candidates"]]
    if any(len(c) == 0 for c in cands):
        raise ValueError("sampled protocol needs stored candidates; this split has examples without any")
    width = max(len(c) for c in cands)
    idx = torch.tensor([c + [0] * (width - len(c)) for c in cands])
    valid = torch.tensor([[j < len(c) for j in range(width)] for c in cands])
    is_t = torch.tensor([[j < len(t) for j in range(width)] for t in chunk["targets"]])
    return scores.gather(1, idx), is_t, valid


def _full(scores: torch.Tensor, chunk: pd.DataFrame):
    B, n = scores.shape
    is_t = torch.zeros((B, n), dtype=torch.bool)
    valid = torch.ones((B, n), dtype=torch.bool)
    for b, (targets, history) in enumerate(zip(chunk["targets"], chunk["history"])):
        if len(history):
            valid[b, torch.tensor(list(history))] = False
        is_t[b, torch.tensor(list(targets))] = True
    valid |= is_t
    return scores, is_t, valid


def evaluate(scorer, examples: pd.DataFrame, protocols=PROTOCOLS, ks=DEFAULT_KS, chunk_size: int = 256,
             desc: str = "evaluate") -> pd.DataFrame:
    """Per-example metric rows for every protocol."""
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; use {PROTOCOLS}")
    frames = []
    for i in tqdm(range(0, len(examples), chunk_size), desc=desc, mininterval=5):
        chunk = examples.iloc[i:i + chunk_size]
        scores = scorer.score(chunk).float().cpu()
        if scores.shape[0] != len(chunk):
            raise ValueError(f"scorer returned {scores.shape[0]} rows for {len(chunk)} examples")
        if not torch.isfinite(scores).all():
            raise ValueError("scorer returned non-finite scores; the model is broken (check its training log)")
        for protocol in protocols:
            s, is_t, valid = (sampled_candidates if protocol == "sampled" else _full)(scores, chunk)
            m = metrics_from_ranks(target_ranks(s, is_t, valid), is_t, ks)
            df = pd.DataFrame({"example_id": chunk["example_id"].to_numpy(), "user": chunk["user"].to_numpy(),
                               "task": chunk["task"].to_numpy(), "protocol": protocol, **m})
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def evaluation_subset(examples: pd.DataFrame, per_task: int) -> pd.DataFrame:
    """At most ``per_task`` examples of each task, chosen with a fixed seed (identical for every method)."""
    if per_task <= 0:
        return examples
    parts = []
    for _, grp in examples.groupby("task", sort=True):
        keep = np.sort(np.random.default_rng(1234).permutation(len(grp))[:per_task])
        parts.append(grp.iloc[keep])
    return pd.concat(parts).sort_values("example_id", kind="stable").reset_index(drop=True)


def summarise(rows: pd.DataFrame, ks=DEFAULT_KS) -> dict:
    """Mean of every metric per protocol and task: {protocol: {task: {metric: value, "n": count}}}."""
    names = metric_names(ks)
    out: dict = {}
    for (protocol, task), grp in rows.groupby(["protocol", "task"], sort=True):
        out.setdefault(protocol, {})[task] = {**{m: float(np.mean(grp[m])) for m in names}, "n": int(len(grp))}
    return out
