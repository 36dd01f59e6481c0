"""Tiny raw files in the real formats of the paper's datasets, written by the tests themselves.

Each writer puts its files under ``root`` and returns the loader parameters that prepare them (small
``num_negatives`` so a few dozen items suffice). The expected outcome of each preparation step is worked
out by hand in the tests next to the data (tests/test_data_qilin.py, tests/test_data_amazon.py).
"""
from __future__ import annotations

import gzip
import html
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------- Qilin (Hugging Face THUIR/Qilin, parquet)

_ENGAGEMENT = [("position", pa.int64()), ("click", pa.int64()), ("like", pa.int64()), ("collect", pa.int64()),
               ("comment", pa.int64()), ("share", pa.int64()), ("page_time", pa.float64())]


def _qilin_schema(task: str) -> pa.Schema:
    ts = "request_timestamp" if task == "rec" else "search_timestamp"
    detail = pa.struct([("note_idx", pa.int64()), *_ENGAGEMENT, (ts, pa.int64())])
    head = ([("search_idx", pa.int64()), ("session_idx", pa.int64()), ("user_idx", pa.int64()),
             ("query", pa.string()), ("query_from_type", pa.int64())] if task == "search" else
            [("request_idx", pa.int64()), ("session_idx", pa.int64()), ("user_idx", pa.int64())])
    prefix = "search" if task == "search" else "rec"
    return pa.schema(head + [("recent_clicked_note_idxs", pa.list_(pa.int64())),
                             (f"{prefix}_results", pa.list_(pa.int64())),
                             (f"{prefix}_result_details_with_idx", pa.list_(detail))])


# (file, user, time, clicked notes, history, query); shown notes are added by _qilin_row.
_R, _S = "recommendation", "search"
QILIN_REQUESTS = [
    # user 1: notes 100-107; note 900 is too rare for the 3-core (clicked once, in one history)
    (_R + "_train", 1, 10, [100], [], None),
    (_R + "_train", 1, 20, [101, 900], [100], None),
    (_R + "_train", 1, 30, [102], [100, 101], None),
    (_R + "_test", 1, 40, [103, 104], [100, 101, 102], None),
    (_S + "_train", 1, 15, [105], [100, 103], "口红推荐"),
    (_S + "_train", 1, 25, [106], [100, 101, 900, 104], "防晒霜"),
    (_S + "_test", 1, 35, [107], [100, 101, 102, 103], "口红推荐"),
    # user 2: notes 110-117 (117 only shown); a request without click; note 901 counts only for user 4
    (_R + "_train", 2, 5, [], [], None),
    (_R + "_train", 2, 50, [110], [901], None),
    (_R + "_test", 2, 60, [111, 112], [110], None),
    (_S + "_train", 2, 52, [113], [110], "连衣裙"),
    (_S + "_train", 2, 54, [114], [110, 113], "连衣裙 夏季"),
    (_S + "_test", 2, 70, [115, 116], [110, 113, 114, 111], "通勤包"),
    # user 3: notes 120-127; two requests at the same time; a search whose only click (902) is too rare
    (_R + "_train", 3, 100, [120], [], None),
    (_R + "_train", 3, 100, [121], [120], None),
    (_R + "_train", 3, 110, [122], [120, 121], None),
    (_R + "_test", 3, 120, [123], [120, 121, 122], None),
    (_S + "_train", 3, 105, [124], [120, 121], "跑鞋"),
    (_S + "_train", 3, 107, [902], [], "跑鞋"),
    (_S + "_train", 3, 115, [125], [124], "瑜伽垫"),
    (_S + "_test", 3, 125, [126, 127], [124, 125, 123], "瑜伽垫"),
    # user 4: recommendation only; user 5: two searches only -> both dropped
    *[(_R + "_train", 4, 200 + k, [n], [], None) for k, n in enumerate([901, 901, 130, 131, 132])],
    *[(_R + "_train", 5, 300 + k, [n], [], None) for k, n in enumerate([140, 141, 142])],
    *[(_S + "_train", 5, 310 + k, [n], [], "相机") for k, n in enumerate([143, 144])],
]
QILIN_USER_NOTES = {1: range(100, 108), 2: range(110, 118), 3: range(120, 128)}
# A second set, worked out in tests/test_data_qilin.py: user 7's history lists cover all but three items, among
# them note 422, which is only in the history of a request without a click, and notes the user never clicked; a
# note clicked twice in one request; a duplicated row; user 8 ends with two search requests (one more has no
# click) and keeps recommendation only.
QILIN_QUIRKS = [
    (_R + "_train", 7, 10, [400, 400, 401], [410, 406, 411, 412], None),
    (_R + "_train", 7, 20, [402], [413, 403, 414], None),
    (_R + "_train", 7, 20, [402], [413, 403, 414], None),  # the same row again
    (_R + "_test", 7, 30, [403], [415, 433], None),
    (_S + "_train", 7, 5, [], [422], "z"),
    (_S + "_train", 7, 11, [404], [405, 416, 417, 418], "a"),
    (_S + "_train", 7, 21, [406], [419, 420, 405], "b"),
    (_S + "_test", 7, 31, [405], [406], "c"),
    (_R + "_train", 8, 50, [430], [], None),
    (_R + "_train", 8, 60, [431], [430], None),
    (_R + "_test", 8, 70, [432], [430, 431, 422], None),
    (_S + "_train", 8, 55, [422], [], "d"),
    (_S + "_train", 8, 65, [433], [], "e"),
    (_S + "_test", 8, 75, [], [], "f"),
]


def qilin_interactions(requests: list[tuple]) -> dict[int, set[int]]:
    """{user: every note the user clicked or had in a history list}, over all of the user's request rows."""
    out: dict[int, set[int]] = {}
    for _, user, _, clicked, history, _ in requests:
        out.setdefault(user, set()).update(clicked, history)
    return out
QILIN_SHOWN_ONLY = [128, 129]  # shown in every request, never clicked: count for the core, never items


def _qilin_row(index: int, user: int, ts: int, clicked: list[int], history: list[int], query) -> dict:
    shown = [n for n in QILIN_USER_NOTES.get(user, []) if n not in clicked] + QILIN_SHOWN_ONLY
    notes = clicked + shown
    ts_key = "search_timestamp" if query is not None else "request_timestamp"
    # the request's time is the latest result time: the first result is logged a second earlier
    details = [{"note_idx": n, "position": k + 1, "click": int(n in clicked), "like": 0, "collect": 0, "comment": 0,
                "share": 0, "page_time": 3.5 if n in clicked else None, ts_key: ts - (k == 0)}
               for k, n in enumerate(notes)]
    prefix = "search" if query is not None else "rec"
    row = {"session_idx": index // 3, "user_idx": user, "recent_clicked_note_idxs": history,
           f"{prefix}_results": notes, f"{prefix}_result_details_with_idx": details}
    if query is not None:
        row.update(search_idx=index, query=query, query_from_type=1)
    else:
        row.update(request_idx=index)
    return row


def write_qilin_fixture(root: Path, requests: list[tuple] = QILIN_REQUESTS) -> dict:
    """Qilin parquet files in the Hugging Face layout <root>/<config>/train-00000-of-00001.parquet."""
    root = Path(root)
    by_file: dict[str, list[dict]] = {}
    for index, (file, user, ts, clicked, history, query) in enumerate(requests):
        by_file.setdefault(file, []).append(_qilin_row(index, user, ts, clicked, history, query))
    for file, rows in by_file.items():
        task = "search" if file.startswith("search") else "rec"
        path = root / file / "train-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=_qilin_schema(task)), path, row_group_size=4)
    notes = [n for n in range(100, 145) if n != 127] + [900, 901, 902]  # note 127 is missing from the notes
    path = root / "notes" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"note_idx": pa.array(notes, pa.int64()),
                             "note_title": [None if n == 126 else f"笔记 {n}" for n in notes],
                             "note_content": [f"内容 {n}" for n in notes],
                             "note_type": pa.array([1] * len(notes), pa.int64())}), path, row_group_size=8)
    return {"root": str(root), "num_negatives": 5, "max_history": 2}


# ---------------------------------------------------------------- Amazon, UniSAR's pickles

UNISAR_VOCAB = {1: "kindle", 2: "store", 3: "ebooks", 4: "romance", 5: "mystery", 6: "thriller", 7: "science",
                8: "fiction", 9: "history"}
# user -> [(pickle split, task, ts, item, keyword)]; all_his is the event's position in the user's sequence.
# Keywords take every form UniSAR uses for word ids: a list, a list written as text, a bare int.
UNISAR_EVENTS = {
    1: [("train", "rec", 100, 1, None), ("train", "src", 101, 2, [1, 2, 4]), ("train", "rec", 102, 3, None),
        ("train", "rec", 103, 4, None), ("train", "src", 104, 5, "[1, 3, 5]"), ("train", "rec", 104, 5, None),
        ("train", "rec", 105, 6, None), ("train", "src", 106, 7, 6),
        ("val", "src", 107, 8, [7, 8]), ("val", "rec", 108, 9, None),
        ("test", "rec", 109, 10, None), ("test", "src", 110, 10, [1, 2, 9])],
    2: [*[("train", "src" if k in (1, 3) else "rec", 200 + k, 11 + k, {1: [4], 3: "[5]"}.get(k)) for k in range(16)],
        ("val", "src", 216, 27, [4]), ("test", "rec", 217, 28, None), ("test", "src", 218, 11, [5, 6])],
    3: [("train", "rec", 300, 29, None), ("train", "src", 301, 30, [9]), ("train", "rec", 302, 31, None),
        ("train", "rec", 303, 32, None), ("val", "rec", 304, 33, None), ("test", "src", 305, 34, [8, 9])],
    9: [("val", "rec", 400, 39, None), ("test", "src", 401, 40, [4])],  # not in train: dropped
}


def unisar_interactions() -> dict[int, set[int]]:
    """{user: every item of the user's rows}."""
    return {user: {e[3] for e in events} for user, events in UNISAR_EVENTS.items()}


def write_amazon_unisar_fixture(root: Path, keywords: str = "ids") -> dict:
    """UniSAR's six pickles; ``keywords="words"`` writes the queries as text instead of word ids."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = {f"{t}_{s}": [] for t in ("rec", "src") for s in ("train", "val", "test")}
    for user, events in UNISAR_EVENTS.items():
        for position, (split, task, ts, item, keyword) in enumerate(events):
            if task == "src" and keywords == "words":
                ids = [keyword] if isinstance(keyword, int) else json.loads(keyword) if isinstance(keyword, str) else keyword
                keyword = " ".join(UNISAR_VOCAB[w] for w in ids)
            tables[f"{task}_{split}"].append({"user_id": user, "item_id": item, "ts": ts,
                                              "keyword": keyword if task == "src" else 0, "all_his": position})
    # rows of a file out of time order: the loader sorts
    for name, rows in tables.items():
        pd.DataFrame(rows[::-1], columns=["user_id", "item_id", "ts", "keyword", "all_his"]).to_pickle(root / f"{name}.pkl")
    params = {"root": str(root), "num_negatives": 5, "max_history": 5}
    if keywords == "ids":
        (root / "vocab.tsv").write_text("".join(f"{i}\t{w}\n" for i, w in UNISAR_VOCAB.items()), encoding="utf-8")
        params["vocab_path"] = str(root / "vocab.tsv")
    return params


# ---------------------------------------------------------------- Amazon, raw 5-core reviews + metadata

AMAZON_CATEGORIES = {
    "B001": [["Kindle Store", "Kindle eBooks", "Romance"], ["Books", "Romance"]],
    "B002": [["Kindle Store", "Kindle eBooks", "Mystery, Thriller & Suspense", "Thrillers"]],
    "B003": [["Books"], ["Kindle Store", "Kindle eBooks", "Literature & Fiction", "Women's Fiction"]],
    "B004": [["Kindle Store", "Kindle eBooks", "Science Fiction & Fantasy", "Fantasy"]],
    "B005": [["Kindle Store", "Kindle eBooks", "Romance", "Historical"]],
    "B006": [["Kindle Store", "Kindle eBooks", "Teen & Young Adult"]],
    "B007": [["Kindle Store", "Kindle eBooks", "Biographies & Memoirs"]],
    "B008": [["Kindle Store", "Kindle eBooks", "Romance"], ["Kindle Store", "Kindle eBooks", "Mystery"]],
    "B009": [["Kindle Store", "Kindle eBooks", "Humor & Entertainment", "Humor and the Arts"]],
    "B010": [["Kindle Store", "Kindle eBooks", "Mystery, Thriller & Suspense", "Mystery"]],
    "B011": [[]],  # no category: no query, dropped
}  # B012 is reviewed but has no metadata line: dropped
AMAZON_TITLES = {"B001": "Love & Tea", "B002": "The Night Train", "B004": "Dragons of Ice"}
AMAZON_REVIEWS = [  # (reviewer, asin, unixReviewTime), in file order (not sorted by time)
    ("A1", "B002", 20), ("A1", "B001", 10), ("A1", "B003", 30), ("A1", "B004", 40), ("A1", "B011", 45),
    ("A1", "B005", 50), ("A2", "B002", 11), ("A2", "B003", 21), ("A2", "B006", 31), ("A2", "B007", 41),
    ("A2", "B012", 51), ("A3", "B001", 12), ("A3", "B006", 22), ("A3", "B008", 32), ("A3", "B009", 42),
    ("A3", "B010", 52), ("A4", "B004", 13), ("A4", "B011", 23), ("A4", "B005", 33),
]


def amazon_raw_interactions() -> dict[str, set[str]]:
    """{reviewer: every reviewed asin}."""
    out: dict[str, set[str]] = {}
    for user, asin, _ in AMAZON_REVIEWS:
        out.setdefault(user, set()).add(asin)
    return out


def write_amazon_raw_fixture(root: Path, version: int = 2014) -> dict:
    """Gzipped 5-core reviews and metadata of 'Kindle Store' in the 2014 format (metadata lines are Python
    literals with ``categories``, a list of paths) or the 2018 one (JSON lines, ``category``, one path, HTML
    escaped)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    reviews = root / ("reviews_Kindle_Store_5.json.gz" if version == 2014 else "Kindle_Store_5.json.gz")
    with gzip.open(reviews, "wt", encoding="utf-8") as f:
        for user, asin, ts in AMAZON_REVIEWS:
            f.write(json.dumps({"reviewerID": user, "asin": asin, "reviewerName": f"reader {user}", "overall": 5.0,
                                "reviewText": "Good read.", "summary": "Nice", "unixReviewTime": ts,
                                "reviewTime": "01 1, 2014"}) + "\n")
    meta = root / "meta_Kindle_Store.json.gz"
    with gzip.open(meta, "wt", encoding="utf-8") as f:
        for asin, paths in AMAZON_CATEGORIES.items():
            record = {"asin": asin, "price": 2.99, "related": {"also_bought": ["B001"]}}
            if version == 2014:
                record.update(categories=paths, **({"title": AMAZON_TITLES[asin]} if asin in AMAZON_TITLES else {}))
                f.write(repr(record) + "\n")
            else:  # the 2018 release escapes HTML in its text fields ("&amp;")
                record["category"] = [html.escape(c) for c in max(paths, key=len)]
                if asin in AMAZON_TITLES:
                    record["title"] = html.escape(AMAZON_TITLES[asin])
                f.write(json.dumps(record) + "\n")
    return {"root": str(root), "reviews": reviews.name, "meta": meta.name, "search_share": 1.0,
            "num_negatives": 3}


# ---------------------------------------------------------------- checks shared by the tests

def check_candidates(prepared, num_negatives: int, interactions: dict, users: list) -> None:
    """Every valid/test example stores its targets then ``num_negatives`` distinct negatives, none of them an item
    the user interacted with anywhere in the raw files.

    ``interactions`` maps a raw user to the raw ids of every item the user interacted with, worked out from the
    fixture itself (not from the prepared data); ``users[u]`` is the raw id of prepared user ``u``.
    """
    raw_id = prepared.items["raw_id"].to_numpy()
    assert len(users) == prepared.events["user"].nunique()
    for split in ("valid", "test"):
        for row in prepared.splits[split].itertuples():
            negatives = row.candidates[len(row.targets):]
            assert row.candidates[: len(row.targets)] == row.targets
            assert len(negatives) == num_negatives == len(set(negatives))
            assert all(0 <= n < prepared.n_items for n in negatives)
            clicked = {str(i) for i in interactions[users[row.user]]}
            assert not {raw_id[n] for n in negatives} & clicked, (split, row.example_id)
