"""No stored negative of any loader is an item its user interacted with, over whole prepared fixtures.

The interactions are worked out from the raw fixtures themselves (every click and history-list note of Qilin,
every UniSAR row, every review, every MovieLens rating), never from the prepared data, so a loader that loses an
interaction on its way to the sampler fails here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fixtures_paper import (QILIN_QUIRKS, QILIN_REQUESTS, amazon_raw_interactions, check_candidates,
                            qilin_interactions, unisar_interactions, write_amazon_raw_fixture,
                            write_amazon_unisar_fixture, write_qilin_fixture)
from gemsbench.data import movielens
from gemsbench.data.build import sample_negatives
from gemsbench.data.prepared import load_prepared
from gemsbench.data.rawio import examples_frame
from gemsbench.data.registry import get_preparer

CASES = {  # loader, fixture writer, extra parameters, interactions, raw id of each prepared user
    "qilin": ("qilin", write_qilin_fixture, {}, lambda: qilin_interactions(QILIN_REQUESTS), [1, 2, 3]),
    "qilin_quirks": ("qilin", lambda root: write_qilin_fixture(root, QILIN_QUIRKS), {"core": 1, "num_negatives": 3},
                     lambda: qilin_interactions(QILIN_QUIRKS), [7, 8]),
    "amazon_unisar": ("amazon_unisar", write_amazon_unisar_fixture, {}, unisar_interactions, [1, 2, 3]),
    "amazon_raw": ("amazon_raw", write_amazon_raw_fixture, {}, amazon_raw_interactions, ["A1", "A2", "A3"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_paper_loaders_store_no_interacted_item_as_negative(case, tmp_path):
    loader, write, extra, interactions, users = CASES[case]
    params = {**write(tmp_path / "raw"), **extra}
    get_preparer(loader)(params, tmp_path / "out")
    check_candidates(load_prepared(tmp_path / "out"), params["num_negatives"], interactions(), users)


def write_movielens_fixture(root, n_users: int = 8, n_movies: int = 30, per_user: int = 20, seed: int = 0):
    """Random ratings in RecBole's atomic files (``ml-100k.inter``, ``ml-100k.item``): synthetic, not MovieLens.

    A rating's timestamp is ``1000 * user + k``, so a prepared event names its raw user. Returns the ratings.
    """
    rng = np.random.default_rng(seed)
    rows = [(u, int(m), int(rng.integers(1, 6)), 1000 * u + k)
            for u in range(1, n_users + 1) for k, m in enumerate(rng.choice(n_movies, per_user, replace=False) + 1)]
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    root.mkdir(parents=True)
    ratings.to_csv(root / "ml-100k.inter", sep="\t", index=False,
                   header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    pd.DataFrame({"item_id:token": range(1, n_movies + 1),
                  "movie_title:token_seq": [f"Film {m}" for m in range(1, n_movies + 1)],
                  "release_year:token": [1950 + m for m in range(1, n_movies + 1)],
                  "class:token_seq": ["Drama" if m % 2 else "Comedy Romance" for m in range(1, n_movies + 1)]}
                 ).to_csv(root / "ml-100k.item", sep="\t", index=False)
    return ratings


def test_movielens_negatives_exclude_ratings_under_min_rating(tmp_path, monkeypatch):
    """Ratings under ``min_rating`` are no events, yet the user watched the film: it is never their negative."""
    ratings = write_movielens_fixture(tmp_path / "ml")
    monkeypatch.setattr(movielens, "movielens_dir", lambda: tmp_path / "ml")
    get_preparer("movielens")({"min_rating": 3, "num_negatives": 5}, tmp_path / "out")
    d = load_prepared(tmp_path / "out")
    users = d.events.groupby("user")["ts"].first().floordiv(1000).tolist()
    check_candidates(d, 5, ratings.groupby("user_id")["item_id"].agg(set).to_dict(), users)
    # each kept user has 4 valid and test examples (both tasks); its films rated under 3 that are items count there
    items = set(d.items["raw_id"].astype(int))
    below = ratings[ratings["rating"] < 3].groupby("user_id")["item_id"].agg(set)
    expected = sum(4 * len(below.get(u, set()) & items) for u in users)
    assert expected > 0 and d.stats["negatives_excluded_other_interactions"] == expected


def test_a_history_item_outside_the_users_interactions_is_a_loader_error():
    """A history item must be among the interactions the sampler excludes, else it could come back as a negative."""
    examples = examples_frame([(0, "rec", "", [3], [""], [""], [1], 0)])
    with pytest.raises(ValueError, match=r"history items \[3\] .*other_items"):
        sample_negatives(examples, 10, {0: {1}}, {}, 2, seed=0)
    candidates, excluded = sample_negatives(examples, 10, {0: {1}}, {0: {1, 3}}, 2, seed=0)
    assert excluded == {"targets": 1, "user_events": 0, "other_interactions": 1}
    assert not set(candidates["candidates"][0][1:]) & {1, 3}
