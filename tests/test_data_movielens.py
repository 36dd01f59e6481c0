"""The embedded MovieLens-100K benchmark: leave-one-out invariants, stored negatives, statistics, errors.

Reads the data from the installed `recbole` package (never a committed copy: its terms forbid it).
"""
import importlib.util

import pandas as pd
import pytest

from gemsbench.data import movielens
from gemsbench.data.prepared import PreparedDataError, load_prepared
from gemsbench.data.registry import get_preparer


@pytest.fixture(scope="module")
def ml(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml")
    get_preparer("movielens")({"num_negatives": 99}, out)
    return load_prepared(out)


def test_statistics(ml):
    s = ml.stats
    assert s["items"] == 1682 and s["users"] == 940  # users with >= 3 events of each task
    assert s["interactions"] == s["rec_interactions"] + s["search_interactions"]
    assert 0.33 < s["search_share"] < 0.37  # search_share 0.35, seeded Bernoulli
    for split in ("valid", "test"):
        assert s[f"{split}_rec_examples"] == s[f"{split}_search_examples"] == s["users"]


def test_leave_one_out_by_time(ml):
    ev = ml.events
    for (user, task), grp in ev.groupby(["user", "task"]):
        splits = grp.sort_values("ts", kind="stable")["split"].tolist()
        assert splits[-1] == "test" and splits[-2] == "valid" and set(splits[:-2]) <= {"train"}
        break
    per = ev[ev["split"] != "train"].groupby(["user", "task", "split"]).size()
    assert (per == 1).all()


def test_no_evaluation_target_enters_a_training_input(ml):
    held = set(map(tuple, ml.events[ml.events["split"] != "train"][["user", "item"]].to_numpy()))
    train = ml.splits["train"]
    leaked = sum((u, h) in held for u, hist in zip(train["user"], train["history"]) for h in hist)
    assert leaked == 0


def test_search_examples_carry_their_item_query(ml):
    test = ml.splits["test"]
    search = test[test["task"] == "search"]
    queries = ml.items["query"].to_numpy()
    assert all(q == queries[t[0]] for q, t in zip(search["query"], search["targets"]))
    assert (test[test["task"] == "rec"]["query"] == "").all()
    assert movielens.item_query("Comedy Romance", "1995") == "comedy romance nineties"


def test_stored_negatives(ml):
    user_items = ml.events.groupby("user")["item"].agg(set)
    for row in ml.splits["test"].itertuples():
        cands = list(row.candidates)
        assert len(cands) == 100 and cands[0] == row.targets[0] and len(set(cands)) == 100
        assert not (set(cands[1:]) & user_items[row.user])


def test_preparation_is_deterministic(ml, tmp_path):
    get_preparer("movielens")({"num_negatives": 99}, tmp_path)
    again = load_prepared(tmp_path)
    pd.testing.assert_frame_equal(ml.items, again.items)
    pd.testing.assert_frame_equal(ml.events, again.events)
    for split in ("train", "valid", "test"):
        assert len(ml.splits[split]) > 0
        pd.testing.assert_frame_equal(ml.splits[split], again.splits[split])
    assert ml.stats == again.stats and ml.meta == again.meta


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PreparedDataError, match="pip install --no-deps recbole==1.2.1"):
        get_preparer("movielens")({}, tmp_path)


def test_unknown_parameter_is_a_clear_error(tmp_path):
    with pytest.raises(PreparedDataError, match="unknown movielens parameter"):
        get_preparer("movielens")({"serch_share": 0.3}, tmp_path)
