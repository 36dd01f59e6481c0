"""The Amazon loaders on the hand-made fixtures of tests/fixtures_paper.py, worked out by hand from the rules of
docs/datasets.md.

UniSAR pickles (UNISAR_EVENTS; users 1, 2, 3 become 0, 1, 2, items are written by raw id): user 9 has no
train rows and is dropped; an example needs 5 earlier events, not counting an immediately preceding event on
the same item (an S and an R record of one interaction, ordered by ``all_his``), which leaves the history. So
user 1's position 5, which repeats position 4's item, has only 4 and is no example; its train rows give examples
from position 6 on; user 3's val row (4 earlier events) is none either. The history is the last 5
(``max_history``) events before the left-out one.
Raw reviews (AMAZON_REVIEWS, all search): B011 has no category and B012 no metadata, so user A4 keeps two
reviews and is dropped; then leave-one-out per user.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_paper import (AMAZON_REVIEWS, amazon_raw_interactions, check_candidates, unisar_interactions,
                            write_amazon_raw_fixture, write_amazon_unisar_fixture)
from gemsbench.data import amazon
from gemsbench.data.prepared import PreparedDataError, load_prepared
from gemsbench.data.registry import get_preparer

R, S = "rec", "search"


def prepare(loader, params, out):
    get_preparer(loader)(params, out)
    return load_prepared(out)


def by_raw_id(d, split):
    raw_id = d.items["raw_id"].to_numpy()
    return [(r.user, r.task, r.query, raw_id[r.history].tolist(), r.history_task, r.history_query,
             raw_id[r.targets].tolist(), r.ts) for r in d.splits[split].itertuples()]


# ---------------------------------------------------------------- UniSAR pickles

def ids(*items):
    return [str(i) for i in items]


UNISAR_VALID = [
    (0, S, "science fiction", ids(4, 5, 5, 6, 7), [R, S, R, R, S], ["", "kindle ebooks mystery", "", "", "thriller"],
     ids(8), 107),
    (0, R, "", ids(5, 5, 6, 7, 8), [S, R, R, S, S], ["kindle ebooks mystery", "", "", "thriller", "science fiction"],
     ids(9), 108),
    (1, S, "romance", ids(22, 23, 24, 25, 26), [R] * 5, [""] * 5, ids(27), 216),
]
UNISAR_TEST = [
    (0, R, "", ids(5, 6, 7, 8, 9), [R, R, S, S, R], ["", "", "thriller", "science fiction", ""], ids(10), 109),
    (0, S, "kindle store history", ids(5, 6, 7, 8, 9), [R, R, S, S, R], ["", "", "thriller", "science fiction", ""],
     ids(10), 110),  # the R record of item 10 just before leaves the history
    (1, R, "", ids(23, 24, 25, 26, 27), [R, R, R, R, S], ["", "", "", "", "romance"], ids(28), 217),
    (1, S, "mystery thriller", ids(24, 25, 26, 27, 28), [R, R, R, S, R], ["", "", "", "romance", ""], ids(11), 218),
    (2, S, "fiction history", ids(29, 30, 31, 32, 33), [R, S, R, R, R], ["", "history", "", "", ""], ids(34), 305),
]


@pytest.fixture(scope="module")
def unisar(tmp_path_factory):
    params = write_amazon_unisar_fixture(tmp_path_factory.mktemp("unisar_raw"))
    return params, prepare("amazon_unisar", params, tmp_path_factory.mktemp("unisar_out"))


def test_unisar_examples(unisar):
    _, d = unisar
    assert by_raw_id(d, "valid") == UNISAR_VALID
    assert by_raw_id(d, "test") == UNISAR_TEST
    train = by_raw_id(d, "train")
    assert train[0] == (0, S, "thriller", ids(3, 4, 5, 5, 6), [R, R, S, R, R], ["", "", "kindle ebooks mystery", "", ""],
                        ids(7), 106)  # user 1's last example; its only other one (position 6) is not drawn
    user2 = train[1:]  # the last example (target 26) plus round(0.3 * 10) = 3 of the 10 others (targets 16-25)
    targets = [int(t[6][0]) for t in user2]
    assert len(user2) == 4 and targets[-1] == 26 and set(targets) < set(range(16, 27)) and targets == sorted(targets)
    assert all(t[3] == ids(*range(x - 5, x)) and t[1] == R for t, x in zip(user2, targets))


def test_unisar_events_items_and_statistics(unisar):
    _, d = unisar
    assert d.items["raw_id"].tolist() == ids(*range(1, 35)) and set(d.items["title"]) == {""}
    assert d.events.groupby("split").size().to_dict() == {"train": 28, "valid": 4, "test": 5}
    assert set(d.events["user"]) == {0, 1, 2}
    # Negatives, over the 8 valid and test examples: user 1 has 10 event items (4 examples), user 2 18 (3), user
    # 3 6 (1), each example 1 target; no interaction is outside the events.
    expected = {"users": 3, "items": 34, "interactions": 37, "search_interactions": 11, "rec_interactions": 26,
                "distinct_queries": 10, "mean_history_length": 5.0,
                "train_rec_examples": 4, "train_search_examples": 1, "valid_rec_examples": 1,
                "valid_search_examples": 2, "test_rec_examples": 2, "test_search_examples": 3,
                "negatives_excluded_targets": 8, "negatives_excluded_user_events": 4 * 9 + 3 * 17 + 5,
                "negatives_excluded_other_interactions": 0}
    assert {k: d.stats[k] for k in expected} == expected
    table = (d.root / "stats.md").read_text()
    assert "| 3 | 34 | 11 | 26 | 10 | 5.00 |" in table and "| 8 | 92 | 0 |" in table


def test_unisar_example_eligibility_and_window(unisar):
    """Before the 30 % draw: an example needs 5 earlier events besides a left-out same-item predecessor."""
    params, _ = unisar
    raw = amazon.read_unisar(params["root"], params["vocab_path"])
    raw = raw.assign(split_rank=raw["split"].map(["train", "valid", "test"].index))
    raw = raw[raw["user_id"] != 9].sort_values(["user_id", "split_rank", "ts", "all_his"], kind="stable")
    events = raw.rename(columns={"user_id": "user", "item_id": "item"})
    examples = amazon.unisar_examples(events, max_history=5, min_history=5)
    user1 = examples["train"][examples["train"]["user"] == 1]
    assert user1["targets"].tolist() == [[6], [7]]  # position 5 (item 5 again) has 4 countable earlier events
    assert user1["history"].tolist() == [[2, 3, 4, 5, 5], [3, 4, 5, 5, 6]]
    assert len(examples["train"][examples["train"]["user"] == 2]) == 11  # positions 5-15
    assert examples["train"]["user"].isin([1, 2]).all() and len(examples["valid"]) == 3
    test = examples["test"].set_index("ts")
    assert test.loc[110, "history"] == [5, 6, 7, 8, 9]  # the 5 events before the left-out R record of item 10


def test_unisar_candidates_and_seed(unisar, tmp_path):
    params, d = unisar
    check_candidates(d, num_negatives=5, interactions=unisar_interactions(), users=[1, 2, 3])
    again = prepare("amazon_unisar", params, tmp_path / "again")
    other = prepare("amazon_unisar", {**params, "seed": 3}, tmp_path / "other")
    for split in ("train", "valid", "test"):
        assert again.splits[split].equals(d.splits[split])
    assert other.splits["test"]["candidates"].tolist() != d.splits["test"]["candidates"].tolist()
    assert other.splits["train"]["targets"].tolist() != d.splits["train"]["targets"].tolist()


def test_unisar_keywords_as_words_give_the_same_dataset(unisar, tmp_path):
    _, d = unisar
    words = prepare("amazon_unisar", write_amazon_unisar_fixture(tmp_path / "raw", keywords="words"), tmp_path / "out")
    assert words.events.equals(d.events)
    for split in ("train", "valid", "test"):
        assert words.splits[split].equals(d.splits[split])


@pytest.mark.parametrize("value, parsed", [
    (7, [7]), (np.int64(7), [7]), ([3, 17], [3, 17]), (np.array([3, 17]), [3, 17]), ("[3, 17]", [3, 17]),
    ("12", [12]), (" kindle  store ", "kindle store"), ("3d printing", "3d printing")])
def test_parse_keyword(value, parsed):
    assert amazon.parse_keyword(value) == parsed


def test_unisar_word_ids_need_a_complete_vocabulary(unisar, tmp_path):
    params, _ = unisar
    with pytest.raises(PreparedDataError, match=r"src_\w+\.pkl: column `keyword` holds word ids.*vocab_path"):
        prepare("amazon_unisar", {k: v for k, v in params.items() if k != "vocab_path"}, tmp_path / "a")
    vocab = tmp_path / "vocab.tsv"
    vocab.write_text("1\tkindle\n2\tstore\n")
    with pytest.raises(PreparedDataError, match=r"vocab.tsv: no word for word id\(s\) \[3, 4, 5"):
        prepare("amazon_unisar", {**params, "vocab_path": str(vocab)}, tmp_path / "b")
    vocab.write_text("kindle\nstore\n")
    with pytest.raises(PreparedDataError, match=r"vocab.tsv:1: expected `word_id<TAB>word`"):
        prepare("amazon_unisar", {**params, "vocab_path": str(vocab)}, tmp_path / "c")


def test_unisar_missing_file_or_column(tmp_path):
    params = write_amazon_unisar_fixture(tmp_path / "raw")
    frame = pd.read_pickle(tmp_path / "raw/rec_test.pkl")
    frame.drop(columns="all_his").to_pickle(tmp_path / "raw/rec_test.pkl")
    with pytest.raises(PreparedDataError, match=r"rec_test.pkl: field\(s\) \['all_his'\] missing.*UniSAR"):
        prepare("amazon_unisar", params, tmp_path / "a")
    (tmp_path / "raw/src_val.pkl").unlink()
    with pytest.raises(PreparedDataError, match=r"src_val.pkl: file not found.*github.com/TengShi-RUC/UniSAR"):
        prepare("amazon_unisar", params, tmp_path / "b")


# ---------------------------------------------------------------- raw reviews + metadata

QUERIES = {
    "B001": "kindle store ebooks romance",  # longest of two paths; "kindle" once
    "B002": "kindle store ebooks mystery thriller suspense thrillers",
    "B003": "kindle store ebooks literature fiction women",  # "Women's" -> women + the stop-word s
    "B004": "kindle store ebooks science fiction fantasy",
    "B005": "kindle store ebooks romance historical",
    "B006": "kindle store ebooks teen young adult",
    "B007": "kindle store ebooks biographies memoirs",
    "B008": "kindle store ebooks romance",  # two paths of equal length: the first
    "B009": "kindle store ebooks humor entertainment arts",  # "and", "the" are stop-words
    "B010": "kindle store ebooks mystery thriller suspense",
}
TITLES = {"B001": "Love & Tea", "B002": "The Night Train", "B004": "Dragons of Ice"}


def _raw_example(user, target, history, ts):
    return (user, S, QUERIES[target], history, [S] * len(history), [QUERIES[h] for h in history], [target], ts)


RAW_TRAIN = [_raw_example(0, "B002", ["B001"], 20), _raw_example(0, "B003", ["B001", "B002"], 30),
             _raw_example(1, "B003", ["B002"], 21), _raw_example(2, "B006", ["B001"], 22),
             _raw_example(2, "B008", ["B001", "B006"], 32)]
RAW_VALID = [_raw_example(0, "B004", ["B001", "B002", "B003"], 40), _raw_example(1, "B006", ["B002", "B003"], 31),
             _raw_example(2, "B009", ["B001", "B006", "B008"], 42)]
RAW_TEST = [_raw_example(0, "B005", ["B001", "B002", "B003", "B004"], 50),
            _raw_example(1, "B007", ["B002", "B003", "B006"], 41),
            _raw_example(2, "B010", ["B001", "B006", "B008", "B009"], 52)]


@pytest.fixture(scope="module")
def raw2014(tmp_path_factory):
    params = write_amazon_raw_fixture(tmp_path_factory.mktemp("amazon_raw"))
    return params, prepare("amazon_raw", params, tmp_path_factory.mktemp("amazon_raw_out"))


def test_raw_items_examples_and_statistics(raw2014):
    _, d = raw2014
    assert dict(zip(d.items["raw_id"], d.items["query"])) == QUERIES
    assert dict(zip(d.items["raw_id"], d.items["title"])) == {a: TITLES.get(a, "") for a in QUERIES}
    assert by_raw_id(d, "train") == RAW_TRAIN
    assert by_raw_id(d, "valid") == RAW_VALID
    assert by_raw_id(d, "test") == RAW_TEST
    expected = {"users": 3, "items": 10, "interactions": 14, "search_interactions": 14, "rec_interactions": 0,
                "distinct_queries": 9, "items_without_query": 2, "reviews_without_query": 3,
                "train_search_examples": 5, "valid_search_examples": 3, "test_search_examples": 3}
    assert {k: d.stats[k] for k in expected} == expected
    assert d.stats["mean_history_length"] == pytest.approx(26 / 11)
    # Negatives: A1 and A3 have 5 event items, A2 4; each of their valid and test examples has 1 target.
    assert (d.stats["negatives_excluded_targets"], d.stats["negatives_excluded_user_events"],
            d.stats["negatives_excluded_other_interactions"]) == (6, 2 * (4 + 3 + 4), 0)
    check_candidates(d, num_negatives=3, interactions=amazon_raw_interactions(), users=["A1", "A2", "A3"])


def test_raw_2018_format_gives_the_same_dataset(raw2014, tmp_path):
    _, d = raw2014
    new = prepare("amazon_raw", write_amazon_raw_fixture(tmp_path / "raw", version=2018), tmp_path / "out")
    assert new.items.equals(d.items) and new.events.equals(d.events)
    for split in ("train", "valid", "test"):
        assert new.splits[split].equals(d.splits[split])


def test_raw_search_rule_is_one_seeded_draw_per_review(raw2014):
    params, _ = raw2014
    root = Path(params["root"])
    items, events, dropped = amazon.load_raw_events([root / params["reviews"]], [root / params["meta"]],
                                                    search_share=0.5, seed=42)
    kept = [(u, a) for u, a, _ in AMAZON_REVIEWS if a in QUERIES]  # file order, reviews of items with a query
    is_search = np.random.default_rng(42).random(len(kept)) < 0.5
    assert 0 < is_search.sum() < len(kept)
    assert events["task"].tolist() == np.where(is_search, S, R).tolist()
    assert items["raw_id"].to_numpy()[events["item"]].tolist() == [a for _, a in kept]
    assert events["query"].tolist() == [QUERIES[a] if s else "" for (_, a), s in zip(kept, is_search)]
    assert dropped == {"items_without_query": 2, "reviews_without_query": 3}


def test_raw_mixed_tasks_keep_users_with_both(raw2014, tmp_path):
    params, _ = raw2014
    d = prepare("amazon_raw", {**params, "search_share": 0.5, "min_events_per_task": 1, "num_negatives": 2},
                tmp_path / "out")
    assert (d.events.groupby("user")["task"].nunique() == 2).all()
    assert d.stats["rec_interactions"] > 0 and d.stats["search_interactions"] > 0
    assert set(d.events.loc[d.events["task"] == R, "query"]) == {""}


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("breakage, message", [
    (lambda root: _write_gz(root / "reviews_Kindle_Store_5.json.gz",
                            [json.dumps({"reviewerID": "A1", "asin": "B001", "overall": 5.0})]),
     r"reviews_Kindle_Store_5.json.gz: field\(s\) \['unixReviewTime'\] missing"),
    (lambda root: _write_gz(root / "meta_Kindle_Store.json.gz", [repr({"asin": "B001", "title": "x"})]),
     r"meta_Kindle_Store.json.gz: no metadata record has `categories` \(2014\) or `category` \(2018\)"),
    (lambda root: _write_gz(root / "meta_Kindle_Store.json.gz", ["{'asin': 'B001', 'categories': [["]),
     r"meta_Kindle_Store.json.gz:1: neither JSON nor a Python literal"),
    (lambda root: (root / "meta_Kindle_Store.json.gz").unlink(), r"Amazon metadata: no file matches"),
])
def test_raw_broken_files_name_file_field_and_source(tmp_path, breakage, message):
    params = write_amazon_raw_fixture(tmp_path / "raw")
    breakage(tmp_path / "raw")
    with pytest.raises(PreparedDataError, match=message) as err:
        prepare("amazon_raw", params, tmp_path / "out")
    assert "jmcauley.ucsd.edu" in str(err.value)


def test_raw_bad_search_share(raw2014, tmp_path):
    with pytest.raises(PreparedDataError, match="search_share"):
        prepare("amazon_raw", {**raw2014[0], "search_share": 1.5}, tmp_path / "out")
