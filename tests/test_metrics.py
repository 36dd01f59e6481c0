"""Ranking metrics against values computed by hand (ties, multi-target rows, masks)."""
import math

import numpy as np
import pytest
import torch

from gemsbench.metrics import metrics_from_ranks, target_ranks


def ranks_and_metrics(scores, targets, valid=None, ks=(1, 2, 3, 5)):
    s = torch.tensor([scores], dtype=torch.float32)
    is_t = torch.zeros_like(s, dtype=torch.bool)
    is_t[0, targets] = True
    v = None if valid is None else torch.tensor([valid])
    r = target_ranks(s, is_t, v)
    return r[0], {k: float(v[0]) for k, v in metrics_from_ranks(r, is_t, ks).items()}


def test_single_target_rank_two():
    r, m = ranks_and_metrics([0.5, 0.9, 0.1, 0.2], [0])
    assert r[0] == 2
    assert m["hr@1"] == 0 and m["hr@2"] == 1
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert m["mrr@2"] == pytest.approx(0.5) and m["mrr@1"] == 0


def test_ties_are_pessimistic():
    # two negatives tie with the target: both rank above it -> rank 3
    r, m = ranks_and_metrics([0.5, 0.5, 0.5, 0.1], [0])
    assert r[0] == 3
    assert m["hr@2"] == 0 and m["hr@3"] == 1
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))
    # all-equal scores (an untrained model) put the target last, never first
    r, _ = ranks_and_metrics([1.0] * 10, [0])
    assert r[0] == 10


def test_multi_target_row():
    # targets at columns 0 and 1 with scores 0.3 and 0.8; negatives 0.9, 0.5, 0.1
    # ranking: neg .9 (1), tgt .8 (2), neg .5 (3), tgt .3 (4), neg .1 (5)
    r, m = ranks_and_metrics([0.3, 0.8, 0.9, 0.5, 0.1], [0, 1])
    assert r[1] == 2 and r[0] == 4
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg2)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg2)
    assert m["ndcg@1"] == 0.0
    assert m["hr@1"] == 0 and m["hr@2"] == 1
    assert m["mrr@5"] == pytest.approx(0.5)


def test_tied_targets_take_consecutive_positions_after_tied_negatives():
    # two targets and one negative all at 0.7: the negative first, then the targets at 2 and 3
    r, m = ranks_and_metrics([0.7, 0.7, 0.7, 0.2], [0, 1])
    assert sorted([float(r[0]), float(r[1])]) == [2.0, 3.0]
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / idcg)


def test_invalid_candidates_do_not_count():
    # the higher-scoring item at column 1 is masked out (e.g. a history item in the full protocol)
    r, m = ranks_and_metrics([0.5, 0.9, 0.1], [0], valid=[True, False, True])
    assert r[0] == 1 and m["hr@1"] == 1 and m["ndcg@1"] == 1


def test_batch_rows_are_independent():
    s = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    is_t = torch.tensor([[True, False, False], [True, False, False]])
    r = target_ranks(s, is_t)
    m = metrics_from_ranks(r, is_t, (1,))
    assert r[0, 0] == 3 and r[1, 0] == 1
    np.testing.assert_allclose(m["hr@1"], [0.0, 1.0])


def test_nan_scores_are_an_error():
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, False]]))
