"""Ranking metrics with pessimistic ties and multi-target rows.

Rank of a target: 1 + the number of non-target candidates scoring at least as high (a tied negative ranks
above the target) + the number of other targets ranked before it (higher score, or equal score and an
earlier position in the candidate list). With several targets in a row (Qilin test requests):

* HR@K  = 1 if any target is in the top K (hit rate);
* NDCG@K = DCG@K / IDCG@K with binary gains, IDCG over min(#targets, K) ideal positions;
* MRR@K = 1 / rank of the first-ranked target if it is within K, else 0.

Per-example values are averaged uniformly over examples (each request counts once, whatever its number of
targets), per task.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10, 20, 50)


def target_ranks(scores: torch.Tensor, is_target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pessimistic 1-based ranks of the targets.

    scores [B, C]; is_target [B, C] bool; valid [B, C] bool (False = not a candidate, e.g. a history item in
    the full protocol or padding). Returns [B, C] float ranks at target positions, +inf elsewhere.
    """
    scores = scores.float()
    if valid is None:
        valid = torch.ones_like(is_target)
    if torch.isnan(scores[valid]).any():
        raise ValueError("NaN scores: the model produced NaN logits; check the checkpoint and the loss log")
    negatives = valid & ~is_target
    B, C = scores.shape
    ranks = torch.full((B, C), float("inf"))
    rows, cols = torch.nonzero(is_target & valid, as_tuple=True)
    if len(rows) == 0:
        return ranks
    s_t = scores[rows, cols]
    # non-target candidates at least as high as each target
    above_neg = ((scores[rows] >= s_t[:, None]) & negatives[rows]).sum(1)
    # other targets ranked before it: higher score, or tied with a smaller column index
    tgt = is_target[rows] & valid[rows]
    col_idx = torch.arange(C)[None, :]
    before = ((scores[rows] > s_t[:, None]) | ((scores[rows] == s_t[:, None]) & (col_idx < cols[:, None])))
    above_tgt = (before & tgt).sum(1)
    ranks[rows, cols] = (above_neg + above_tgt + 1).float()
    return ranks


def metrics_from_ranks(ranks: torch.Tensor, is_target: torch.Tensor, ks=DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-example HR@K, NDCG@K and MRR@K from target ranks ([B, C], +inf off targets)."""
    n_targets = is_target.sum(1).clamp(min=1)
    best = ranks.min(1).values
    out = {}
    for k in ks:
        in_k = ranks <= k
        gains = torch.where(in_k, 1.0 / torch.log2(ranks.clamp(max=1e9) + 1.0), torch.zeros_like(ranks))
        ideal_n = n_targets.clamp(max=k)
        idcg = torch.tensor([float((1.0 / np.log2(np.arange(2, n + 2))).sum()) for n in ideal_n.tolist()])
        out[f"hr@{k}"] = (best <= k).float().numpy()
        out[f"ndcg@{k}"] = (gains.sum(1) / idcg).numpy()
        out[f"mrr@{k}"] = torch.where(best <= k, 1.0 / best, torch.zeros_like(best)).numpy()
    return out


def metric_names(ks=DEFAULT_KS) -> list[str]:
    return [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks]
