"""The Qilin loader on the hand-made parquet fixtures of tests/fixtures_paper.py, worked out by hand from the
rules of docs/datasets.md.

QILIN_REQUESTS (users 1, 2, 3 become 0, 1, 2; notes are written by raw id): users 4 (no search) and 5 (two
searches) fail the per-task minimum; notes 900 (2 occurrences), 901 (its other occurrences belong to user 4) and
902 (1) fail the 3-core; the core converges in round 2. User 2's request at t=5 has no click and user 3's search
at t=107 loses its only click (902): both are dropped after the core. That leaves user 2 two recommendation
requests, fewer than 3: they are dropped too, so user 2 keeps search only, and note 112 (clicked only there) is
no item, while 110 and 111 stay items (in user 2's search histories) and are kept out of user 2's negatives.
Notes 117, 128, 129 are only ever shown and never become items.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures_paper import QILIN_QUIRKS, QILIN_REQUESTS, check_candidates, qilin_interactions, write_qilin_fixture
from gemsbench.data import qilin
from gemsbench.data.prepared import PreparedDataError, load_prepared
from gemsbench.data.registry import get_preparer

ITEMS = [*range(100, 108), 110, 111, *range(113, 117), *range(120, 128)]
# (user, task, query, history, targets, ts) by raw note id; max_history = 2
TRAIN = [
    (0, "rec", "", [], [100], 10),
    (0, "search", "口红推荐", [100], [105], 15),  # 103 (a test target) leaves the history
    (0, "rec", "", [100], [101], 20),  # 900 is not an item
    (1, "search", "连衣裙", [110], [113], 52),  # 110 was a target of a dropped request only: kept
    (2, "rec", "", [], [120], 100),
    (2, "rec", "", [120], [121], 100),  # same time: read order
    (2, "search", "跑鞋", [120, 121], [124], 105),
]
VALID = [
    (0, "search", "防晒霜", [100, 101], [106], 25),  # 900 not an item, 104 a test target
    (0, "rec", "", [100, 101], [102], 30),
    (1, "search", "连衣裙 夏季", [110, 113], [114], 54),
    (2, "rec", "", [120, 121], [122], 110),
    (2, "search", "瑜伽垫", [124], [125], 115),
]
TEST = [
    (0, "search", "口红推荐", [102, 103], [107], 35),
    (0, "rec", "", [101, 102], [103, 104], 40),
    (1, "search", "通勤包", [114, 111], [115, 116], 70),
    (2, "rec", "", [121, 122], [123], 120),
    (2, "search", "瑜伽垫", [125, 123], [126, 127], 125),
]


def prepare(params, out):
    get_preparer("qilin")(params, out)
    return load_prepared(out)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("qilin_raw")
    return root, write_qilin_fixture(root)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    return prepare(raw[1], tmp_path_factory.mktemp("qilin_out"))


def by_raw_id(d, split):
    raw_id = d.items["raw_id"].astype(int).to_numpy()
    return [(r.user, r.task, r.query, raw_id[r.history].tolist(), raw_id[r.targets].tolist(), r.ts)
            for r in d.splits[split].itertuples()]


def test_examples_per_split(prepared):
    assert by_raw_id(prepared, "train") == TRAIN
    assert by_raw_id(prepared, "valid") == VALID
    assert by_raw_id(prepared, "test") == TEST
    for df in prepared.splits.values():
        assert all(set(t) == {""} or not t for t in df["history_task"])
        assert [len(h) for h in df["history_query"]] == [len(h) for h in df["history"]]


def test_items_titles_and_events(prepared):
    assert prepared.items["raw_id"].tolist() == [str(n) for n in ITEMS]
    titles = dict(zip(prepared.items["raw_id"].astype(int), prepared.items["title"]))
    assert titles[100] == "笔记 100" and titles[126] == "" and titles[127] == ""  # null title; not in notes
    ev = prepared.events
    assert len(ev) == 20 and list(ev["user"]) == sorted(ev["user"])
    assert ev.groupby("user")["ts"].apply(lambda t: t.is_monotonic_increasing).all()
    # one event per clicked note, with the split of its request
    raw_id = prepared.items["raw_id"].astype(int).to_numpy()
    user2 = ev[ev["user"] == 1]
    assert list(zip(raw_id[user2["item"]], user2["split"], user2["query"])) == [
        (113, "train", "连衣裙"), (114, "valid", "连衣裙 夏季"), (115, "test", "通勤包"), (116, "test", "通勤包")]


def test_statistics(prepared, raw, tmp_path):
    # masked: 103 at t=15 and 104 at t=25 (user 1). Negatives, over the 10 valid and test examples: 13 targets;
    # the other items of the user's events (7, 7, 7, 6 for user 1; 3, 2 for user 2; 7, 7, 7, 6 for user 3); and
    # user 2's notes 110 and 111, clicked only in the dropped requests, twice.
    expected = {"users": 3, "items": 22, "interactions": 20, "rec_interactions": 9, "search_interactions": 11,
                "distinct_queries": 7, "rec_requests": 8, "search_requests": 9, "core_rounds": 2,
                "history_notes_masked": 2, "items_missing_from_notes": 1, "users_rec_only": 0,
                "users_search_only": 1, "negatives_excluded_targets": 13, "negatives_excluded_user_events": 59,
                "negatives_excluded_other_interactions": 4,
                "train_rec_examples": 4, "train_search_examples": 3, "valid_rec_examples": 2,
                "valid_search_examples": 3, "test_rec_examples": 2, "test_search_examples": 3}
    assert {k: prepared.stats[k] for k in expected} == expected
    assert prepared.stats["mean_history_length"] == pytest.approx(25 / 17)
    table = (prepared.root / "stats.md").read_text(encoding="utf-8")
    assert "| 3 | 22 | 11 | 9 | 7 | 1.47 |" in table and "| train | 4 | 3 |" in table
    assert "| 13 | 59 | 4 |" in table
    assert json.loads((prepared.root / "meta.json").read_text())["params"]["core"] == 3


def test_candidates_are_valid_and_seeded(prepared, raw, tmp_path):
    check_candidates(prepared, num_negatives=5, interactions=qilin_interactions(QILIN_REQUESTS), users=[1, 2, 3])
    again = prepare(raw[1], tmp_path / "again")
    other = prepare({**raw[1], "seed": 7}, tmp_path / "other")
    for split in ("valid", "test"):
        assert again.splits[split]["candidates"].tolist() == prepared.splits[split]["candidates"].tolist()
        assert other.splits[split]["candidates"].tolist() != prepared.splits[split]["candidates"].tolist()


def test_batch_size_and_top_level_timestamps_do_not_change_the_result(prepared, raw, tmp_path, monkeypatch):
    """Small batches cut row groups into slices; a timestamp column instead of struct fields is read too."""
    root = tmp_path / "raw"
    shutil.copytree(raw[0], root)
    for src in qilin.SOURCES:
        path = root / src.config / "train-00000-of-00001.parquet"
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            row[src.timestamp] = max(d.pop(src.timestamp) for d in row[src.details])
        pq.write_table(pa.Table.from_pylist(rows), path)
    monkeypatch.setattr(qilin, "BATCH_ROWS", 3)
    moved = prepare({**raw[1], "root": str(root)}, tmp_path / "out")
    for split in ("train", "valid", "test"):
        assert moved.splits[split].equals(prepared.splits[split])
    assert moved.events.equals(prepared.events)


def test_newest_first_history_keeps_the_first_notes(raw, tmp_path):
    d = prepare({**raw[1], "history_order": "newest_first"}, tmp_path / "out")
    rows = {(u, t, ts): h for u, t, _, h, _, ts in by_raw_id(d, "test")}
    assert rows[(0, "rec", 40)] == [101, 100]  # listed [100, 101, 102], 100 the most recent
    assert rows[(1, "search", 70)] == [113, 110]


# QILIN_QUIRKS with core 1 (every note survives), max_history 2, 3 negatives. Users 7 and 8 become 0 and 1.
# Items: the notes clicked or in a history list of a kept request: 400-406, 410-420, 422 (user 8's last history),
# 430-433 (433 in user 7's last history), 23 in all; 128 and 129 are only shown. Kept requests: user 7's search
# at t=5 has no click and goes; user 8's search at t=75 too, which leaves user 8 two searches: dropped.
QUIRKS_TRAIN = [
    (0, "rec", "", [411, 412], [400], 10),  # 400 clicked twice: one example; 406 (a valid target) masked
    (0, "rec", "", [411, 412], [401], 10),
    (0, "search", "a", [417, 418], [404], 11),  # 405 (a test target) masked, then the last two kept
    (0, "rec", "", [413, 414], [402], 20),  # 403 masked; the first of the two identical rows
    (1, "rec", "", [], [430], 50),
]
QUIRKS_VALID = [
    (0, "rec", "", [413, 414], [402], 20),  # the second identical row: later in read order
    (0, "search", "b", [419, 420], [406], 21),  # [419, 420, 405]: masked before the window is cut
    (1, "rec", "", [430], [431], 60),
]
QUIRKS_TEST = [
    (0, "rec", "", [415, 433], [403], 30),
    (0, "search", "c", [406], [405], 31),
    (1, "rec", "", [431, 422], [432], 70),
]


@pytest.fixture(scope="module")
def quirks(tmp_path_factory):
    params = {**write_qilin_fixture(tmp_path_factory.mktemp("quirks_raw"), QILIN_QUIRKS), "core": 1,
              "num_negatives": 3}
    return prepare(params, tmp_path_factory.mktemp("quirks_out"))


def test_quirks_examples_and_statistics(quirks):
    assert by_raw_id(quirks, "train") == QUIRKS_TRAIN
    assert by_raw_id(quirks, "valid") == QUIRKS_VALID
    assert by_raw_id(quirks, "test") == QUIRKS_TEST
    # history_notes_masked: one per request over its whole list (406 at t=10 counts once for two examples; 405
    # at t=11 is outside the kept window), at t=10, 11, 20, 20 and 21.
    # Negatives of user 7: it clicked or listed 20 of the 23 items (7 of them in its events), so each of its 4
    # valid and test examples excludes 1 target, 6 other event items and 13 other notes; user 8 (items 430-432
    # in events, 422 and 433 clicked in dropped searches) 1, 2 and 2 in each of 2 examples.
    expected = {"users": 2, "items": 23, "interactions": 11, "rec_interactions": 8, "search_interactions": 3,
                "distinct_queries": 3, "rec_requests": 7, "search_requests": 3, "core_rounds": 2,
                "history_notes_masked": 5, "users_rec_only": 1, "users_search_only": 0,
                "items_missing_from_notes": 23, "negatives_excluded_targets": 6,
                "negatives_excluded_user_events": 28, "negatives_excluded_other_interactions": 56,
                "train_rec_examples": 4, "train_search_examples": 1, "valid_rec_examples": 2,
                "valid_search_examples": 1, "test_rec_examples": 2, "test_search_examples": 1}
    assert {k: quirks.stats[k] for k in expected} == expected
    assert quirks.stats["mean_history_length"] == pytest.approx(18 / 11)


def test_negatives_exclude_every_note_the_user_clicked_or_listed(quirks):
    """User 7's clicks and history lists (a dropped request's included) leave exactly three items to sample."""
    raw_id = quirks.items["raw_id"].astype(int).to_numpy()
    for split in ("valid", "test"):
        for row in quirks.splits[split].itertuples():
            if row.user == 0:
                assert sorted(raw_id[row.candidates[1:]]) == [430, 431, 432]
    check_candidates(quirks, num_negatives=3, interactions=qilin_interactions(QILIN_QUIRKS), users=[7, 8])


def test_core_filter_iterates_until_stable():
    """core 2: note 3 is rare -> b's search loses its only result -> b has one request left and goes -> note 2
    loses b's occurrences; the third round changes nothing."""
    C, S, H = qilin.CLICK, qilin.SHOWN, qilin.HISTORY_NOTE
    req = qilin.Requests(user=np.array([1, 1, 2, 2]), task=np.array([0, 1, 0, 1], np.int8), ts=np.arange(4),
                         query=["", "q", "", "q"], occ_request=np.array([0, 1, 2, 3, 3]),
                         occ_note=np.array([1, 1, 2, 3, 2]), occ_kind=np.array([S, C, C, C, H], np.int8))
    kept, occ_kept, rounds = qilin.core_filter(req, min_requests_per_task=1, core=2, max_rounds=10)
    assert kept.tolist() == [True, True, False, False] and rounds == 3
    assert occ_kept.tolist() == [True, True, False, False, False]
    kept, _, rounds = qilin.core_filter(req, min_requests_per_task=1, core=2, max_rounds=1)
    assert kept.tolist() == [True, True, True, False] and rounds == 1
    kept, _, _ = qilin.core_filter(req, min_requests_per_task=2, core=2, max_rounds=10)
    assert not kept.any()


def _rewrite(path, change):
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        change(row)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _drop_click(row):
    for d in row["search_result_details_with_idx"]:
        d.pop("click")


@pytest.mark.parametrize("breakage, message", [
    (lambda root: shutil.rmtree(root / "search_test"), "search_test"),
    (lambda root: _rewrite(root / "search_test/train-00000-of-00001.parquet", _drop_click), "'click'"),
    (lambda root: _rewrite(root / "search_test/train-00000-of-00001.parquet",
                           lambda r: [d.pop("search_timestamp") for d in r["search_result_details_with_idx"]]),
     "search_timestamp"),
    (lambda root: _rewrite(root / "recommendation_test/train-00000-of-00001.parquet",
                           lambda r: r.pop("recent_clicked_note_idxs")), "recent_clicked_note_idxs"),
    (lambda root: _rewrite(root / "notes/train-00000-of-00001.parquet", lambda r: r.pop("note_title")),
     "note_title"),
])
def test_broken_raw_files_name_file_field_and_source(raw, tmp_path, breakage, message):
    root = tmp_path / "raw"
    shutil.copytree(raw[0], root)
    breakage(root)
    with pytest.raises(PreparedDataError, match=message) as err:
        prepare({**raw[1], "root": str(root)}, tmp_path / "out")
    assert "huggingface.co/datasets/THUIR/Qilin" in str(err.value) and str(root) in str(err.value)
    assert not (tmp_path / "out" / "stats.json").exists()


def test_bad_parameters_are_rejected(raw, tmp_path):
    with pytest.raises(PreparedDataError, match="max_hist"):
        prepare({**raw[1], "max_hist": 5}, tmp_path / "a")
    with pytest.raises(PreparedDataError, match="history_order"):
        prepare({**raw[1], "history_order": "latest"}, tmp_path / "b")
    with pytest.raises(PreparedDataError, match="no request survives the filters"):
        prepare({**raw[1], "min_requests_per_task": 5}, tmp_path / "c")
