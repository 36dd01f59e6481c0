"""Amazon, semi-synthetic product search: two routes into the prepared format.

Amazon has no search log. Product-search work (HEM, Ai et al. 2017; Van Gysel et al. 2016) makes one
query per item from its category path, and the joint search-and-recommendation papers (UniSAR, GEMS) treat
some interactions as searches with that query. The queries are synthetic.

``amazon_unisar`` reads UniSAR's preprocessed pickles ``{rec,src}_{train,val,test}.pkl`` (DataFrames with
``user_id, item_id, ts, keyword, all_his``; they match Amazon Kindle Store 5-core) and builds examples as
the GEMS release does (``data/amazon/process_step_1.py``):

- events: the R (``rec_*``) and S (``src_*``) rows; val and test rows of users absent from train dropped;
  a user's events in file-split order (train, then val, then test), each split by ``ts`` then ``all_his``;
- an immediately preceding event on the same item (an interaction recorded both as R and as S) is left out
  of an event's history and does not count: an event with at least ``min_history`` (5) earlier events besides
  it is an example of the event's task, with the last ``max_history`` (20) events before the left-out one
  (before the event when none is) as history, with their tasks and queries (the release's ``make_example``);
- the examples of train rows form the training split: each user's last one plus a random
  ``train_keep_fraction`` (30 %) of the others (``GroupBy.sample(frac, random_state=seed)``: round(frac * n));
- [ours] the examples of ``*_val.pkl`` rows form the valid split and those of ``*_test.pkl`` rows the test
  split (every such row that qualifies, not only a user's last); both get ``num_negatives`` stored negatives
  from the shared sampler, which excludes every item of the user's events (the release samples test negatives
  only, excluding history and target alone).

``keyword`` holds words or word ids (an int, a list of ints, or such a list as text). Word ids need
``vocab_path``: a text file (``.gz`` allowed) of ``word_id<TAB>word`` lines.

``amazon_raw`` reads the raw 5-core reviews and the metadata of one category (2014 McAuley or 2018 Ni
release), makes each item's query from its longest category path (lower-case, punctuation and stop-words
dropped, each word once) and marks each review a search one independently with probability
``search_share`` (``numpy.random.default_rng(seed)``, one draw per review in file order, over the reviews
of items that have a query; 1.0 = all search, the HEM setting). Items without a category path are dropped.
Then the shared leave-one-out protocol of :func:`.build.finish`.
"""
from __future__ import annotations

import html
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..atomic import atomic_write_text
from .build import add_candidates, compute_stats, densify, filter_min_events_per_task, finish
from .prepared import SPLITS, TASKS, PreparedDataError, register_dataset, write_prepared
from .rawio import (examples_frame, iter_records, loader_params, mean_history_length,
                    open_text, require_fields, resolve_files, stats_markdown)

log = logging.getLogger(__name__)

UNISAR_HINT = ("UniSAR's preprocessed Amazon files come with the UniSAR repository "
               "(https://github.com/TengShi-RUC/UniSAR, data/README.md: data/Amazon/dataset/); set `root` to the "
               "folder holding rec_{train,val,test}.pkl and src_{train,val,test}.pkl; see docs/datasets.md.")
RAW_HINT = ("Amazon review data: 2014 (McAuley, https://jmcauley.ucsd.edu/data/amazon/: "
            "reviews_<Category>_5.json.gz + meta_<Category>.json.gz) or 2018 (Ni, "
            "https://nijianmo.github.io/amazon/: <Category>_5.json.gz + meta_<Category>.json.gz); "
            "see docs/datasets.md.")
UNISAR_DEFAULTS = {"root": None, "vocab_path": None, "max_history": 20, "min_history": 5,
                   "train_keep_fraction": 0.3, "num_negatives": 99, "seed": 42}
RAW_DEFAULTS = {"root": None, "reviews": "reviews_Kindle_Store_5.json.gz", "meta": "meta_Kindle_Store.json.gz",
                "search_share": 0.5, "seed": 42, "max_history": 20, "min_history": 1, "num_negatives": 99,
                "min_events_per_task": 3}
PICKLE_SPLIT = {"train": "train", "valid": "val", "test": "test"}
PICKLE_TASK = {"rec": "rec", "search": "src"}
# NLTK's English stop-word list: short, so no content word of a category name is lost.
STOP_WORDS = frozenset("""
a about above after again against ain all am an and any are aren as at be because been before being below
between both but by can couldn d did didn do does doesn doing don down during each few for from further had
hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its itself
just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or other our ours
ourselves out over own re s same shan she should shouldn so some such t than that the their theirs them
themselves then there these they this those through to too under until up ve very was wasn we were weren what
when where which while who whom why will with won wouldn y you your yours yourself yourselves
""".split())


def _int_column(df: pd.DataFrame, column: str, path: Path, hint: str) -> np.ndarray:
    try:
        return df[column].to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise PreparedDataError(f"{path}: column `{column}` must hold integers ({e}). {hint}") from e


def parse_keyword(value) -> str | list[int]:
    """A UniSAR keyword as words (str) or word ids (list of int): an int, a list of ints or '[3, 17]'."""
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [int(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\[?[\d\s,]*\]?", text) and re.search(r"\d", text):
            return [int(t) for t in re.findall(r"\d+", text)]
        return " ".join(text.split())
    raise PreparedDataError(f"keyword {value!r} of type {type(value).__name__} is neither words nor word ids")


def read_vocab(path: Path) -> dict[int, str]:
    vocab = {}
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[0].strip().isdigit():
                raise PreparedDataError(f"{path}:{line_no}: expected `word_id<TAB>word`, found {line.strip()!r}; "
                                      "see docs/datasets.md for how to make the vocabulary file")
            vocab[int(parts[0])] = parts[1].strip()
    return vocab


def read_unisar(root: Path, vocab_path) -> pd.DataFrame:
    """All pickled events: raw user and item ids, ts, all_his, task, split, query text."""
    frames = []
    for split, file_split in PICKLE_SPLIT.items():
        for task, prefix in PICKLE_TASK.items():
            path = Path(root) / f"{prefix}_{file_split}.pkl"
            if not path.is_file():
                raise PreparedDataError(f"{path}: file not found. {UNISAR_HINT}")
            df = pd.read_pickle(path)
            if not isinstance(df, pd.DataFrame):
                raise PreparedDataError(f"{path}: expected a pandas DataFrame, found {type(df).__name__}. {UNISAR_HINT}")
            needed = ["user_id", "item_id", "ts", "all_his"] + (["keyword"] if task == "search" else [])
            require_fields(df.columns, needed, path, "the DataFrame", UNISAR_HINT)
            frames.append(pd.DataFrame({
                **{c: _int_column(df, c, path, UNISAR_HINT) for c in ("user_id", "item_id", "ts", "all_his")},
                "task": task, "split": split,
                "keyword": [parse_keyword(k) for k in df["keyword"]] if task == "search" else "",
                "source": str(path)}))
    events = pd.concat(frames, ignore_index=True)
    uses_ids = events["keyword"].map(lambda k: isinstance(k, list))
    if uses_ids.any():
        first = events[uses_ids].iloc[0]
        if vocab_path is None:
            raise PreparedDataError(f"{first.source}: column `keyword` holds word ids (e.g. {first.keyword}); set "
                                  "`vocab_path` to a `word_id<TAB>word` file; see docs/datasets.md")
        vocab = read_vocab(Path(vocab_path))
        unknown = sorted({w for k in events.loc[uses_ids, "keyword"] for w in k} - set(vocab))
        if unknown:
            raise PreparedDataError(f"{vocab_path}: no word for word id(s) {unknown[:10]} used in `keyword`; is it "
                                  "the vocabulary these pickles were made with?")
        events.loc[uses_ids, "keyword"] = events.loc[uses_ids, "keyword"].map(lambda k: " ".join(vocab[w] for w in k))
    return events.rename(columns={"keyword": "query"}).drop(columns="source")


def unisar_examples(events: pd.DataFrame, *, max_history: int, min_history: int) -> dict[str, pd.DataFrame]:
    """One example per event with at least ``min_history`` earlier events besides a left-out same-item
    predecessor (``events`` in sequence order); see the module docstring."""
    rows: dict[str, list] = {s: [] for s in SPLITS}
    for user, grp in tqdm(events.groupby("user", sort=True), unit="user", desc="amazon_unisar examples"):
        items, tasks, queries = grp["item"].tolist(), grp["task"].tolist(), grp["query"].tolist()
        splits, ts = grp["split"].tolist(), grp["ts"].tolist()
        for i in range(1, len(items)):
            end = i - 1 if items[i] == items[i - 1] else i
            if end < min_history:
                continue
            lo = max(0, end - max_history)
            rows[splits[i]].append((int(user), tasks[i], queries[i], items[lo:end], tasks[lo:end], queries[lo:end],
                                    [items[i]], int(ts[i])))
    return {s: examples_frame(rows[s]) for s in SPLITS}


def keep_train_share(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Each user's last training example plus a random ``fraction`` of the others."""
    last = train.groupby("user").tail(1).index
    sampled = train.drop(index=last).groupby("user").sample(frac=fraction, random_state=seed).index
    kept = train.loc[train.index.isin(last.union(sampled))].reset_index(drop=True)
    return kept.assign(example_id=np.arange(len(kept), dtype=np.int64))


@register_dataset("amazon_unisar")
def prepare_amazon_unisar(params: dict, out_dir: Path) -> None:
    p = loader_params("amazon_unisar", params, UNISAR_DEFAULTS)
    if p["root"] is None:
        raise PreparedDataError(f"amazon_unisar needs `root`. {UNISAR_HINT}")
    t0 = time.time()
    raw = read_unisar(Path(p["root"]).expanduser(), p["vocab_path"])
    raw = raw[raw["user_id"].isin(raw.loc[raw["split"] == "train", "user_id"])]
    raw = raw.assign(split_rank=raw["split"].map(SPLITS.index))
    raw = raw.sort_values(["user_id", "split_rank", "ts", "all_his"], kind="stable").reset_index(drop=True)
    item_raw, item = np.unique(raw["item_id"], return_inverse=True)
    events = pd.DataFrame({"user": np.unique(raw["user_id"], return_inverse=True)[1], "item": item,
                           "ts": raw["ts"], "task": raw["task"], "query": raw["query"], "split": raw["split"]})
    items = pd.DataFrame({"item": np.arange(len(item_raw)), "raw_id": [str(i) for i in item_raw], "title": "",
                          "query": ""})
    splits = unisar_examples(events, max_history=p["max_history"], min_history=p["min_history"])
    splits["train"] = keep_train_share(splits["train"], p["train_keep_fraction"], p["seed"])
    splits, excluded = add_candidates(splits, events, len(items), p["num_negatives"], p["seed"])
    stats = {**compute_stats(items, events, splits), **excluded, "mean_history_length": mean_history_length(splits)}
    meta = {"dataset": "amazon", "loader": "amazon_unisar", "params": p,
            "source": "UniSAR preprocessed Amazon pickles (https://github.com/TengShi-RUC/UniSAR)",
            "queries": "synthetic, from category paths (UniSAR's preprocessing)"}
    atomic_write_text(stats_markdown("amazon (UniSAR pickles)", stats), Path(out_dir) / "stats.md")
    write_prepared(out_dir, items, events, splits, stats, meta)
    log.info("amazon_unisar: prepared in %.0f s: %s", time.time() - t0, stats)


def category_query(path: list[str]) -> str:
    """HEM-style query of a category path: lower-case words, no punctuation or stop-words, each word once."""
    words = re.sub(r"[^a-z0-9]+", " ", html.unescape(" ".join(path)).lower()).split()
    return " ".join(dict.fromkeys(w for w in words if w not in STOP_WORDS))


def item_category_path(record: dict) -> list[str]:
    """The longest category path (first on ties) of a 2014 record (``categories``: list of paths) or the path
    of a 2018 record (``category``: one path)."""
    if "categories" in record:
        paths = [list(p) for p in record["categories"] or []]
        return max(paths, key=len) if paths else []
    return list(record.get("category") or [])


def read_reviews(files: list[Path]) -> pd.DataFrame:
    rows = []
    for path in files:
        for record in tqdm(iter_records(path, RAW_HINT), unit="review", desc=f"amazon {path.name}"):
            require_fields(record, ("reviewerID", "asin", "unixReviewTime"), path, "a review", RAW_HINT)
            rows.append((record["reviewerID"], record["asin"], int(record["unixReviewTime"])))
    return pd.DataFrame(rows, columns=["raw_user", "asin", "ts"])


def read_metadata(files: list[Path], asins: set) -> pd.DataFrame:
    """Title and query of the reviewed items (items without a category path get query "")."""
    rows, has_categories = {}, False
    for path in files:
        for record in tqdm(iter_records(path, RAW_HINT), unit="item", desc=f"amazon {path.name}"):
            require_fields(record, ("asin",), path, "a metadata record", RAW_HINT)
            has_categories |= "categories" in record or "category" in record
            if record["asin"] in asins:
                title = " ".join(html.unescape(str(record.get("title") or "")).split())
                rows[record["asin"]] = (title, category_query(item_category_path(record)))
    if not has_categories:
        raise PreparedDataError(f"{', '.join(map(str, files))}: no metadata record has `categories` (2014) or "
                              f"`category` (2018), which the queries are made from. {RAW_HINT}")
    return pd.DataFrame([(a, t, q) for a, (t, q) in rows.items()], columns=["asin", "title", "query"])


def load_raw_events(reviews: list[Path], meta: list[Path], search_share: float,
                    seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Items (with queries) and events before any filtering; the seeded search rule applied."""
    inter = read_reviews(reviews)
    info = read_metadata(meta, set(inter["asin"]))
    info = info[info["query"] != ""].sort_values("asin").reset_index(drop=True)
    dropped = {"items_without_query": int(inter["asin"].nunique() - len(info)),
               "reviews_without_query": int((~inter["asin"].isin(info["asin"])).sum())}
    inter = inter[inter["asin"].isin(info["asin"])].reset_index(drop=True)
    is_search = np.random.default_rng(seed).random(len(inter)) < search_share
    items = info.rename(columns={"asin": "raw_id"}).assign(item=np.arange(len(info)))
    item_of = pd.Series(items["item"].to_numpy(), index=items["raw_id"])
    events = pd.DataFrame({"user": np.unique(inter["raw_user"], return_inverse=True)[1],
                           "item": item_of.loc[inter["asin"]].to_numpy(), "ts": inter["ts"].to_numpy(),
                           "task": np.where(is_search, "search", "rec")})
    events["query"] = np.where(is_search, items["query"].to_numpy()[events["item"]], "")
    return items, events, dropped


@register_dataset("amazon_raw")
def prepare_amazon_raw(params: dict, out_dir: Path) -> None:
    p = loader_params("amazon_raw", params, RAW_DEFAULTS)
    if not 0.0 <= p["search_share"] <= 1.0:
        raise PreparedDataError(f"amazon_raw search_share {p['search_share']} must lie in [0, 1]")
    tasks = ("search",) if p["search_share"] == 1.0 else ("rec",) if p["search_share"] == 0.0 else TASKS
    t0 = time.time()
    items, events, dropped = load_raw_events(resolve_files(p["reviews"], p["root"], "Amazon reviews", RAW_HINT),
                                             resolve_files(p["meta"], p["root"], "Amazon metadata", RAW_HINT),
                                             p["search_share"], p["seed"])
    events = filter_min_events_per_task(events, p["min_events_per_task"], tasks)
    if events.empty:
        raise PreparedDataError(f"amazon_raw: no user has {p['min_events_per_task']} events of each of {tasks}; "
                              "lower min_events_per_task or check the files")
    events, items, _ = densify(events, items)
    events, splits, stats = finish(items, events, max_history=p["max_history"], min_history=p["min_history"],
                                   n_negatives=p["num_negatives"], seed=p["seed"])
    stats.update(dropped, mean_history_length=mean_history_length(splits))
    meta = {"dataset": "amazon", "loader": "amazon_raw", "params": p, "source": RAW_HINT,
            "queries": "synthetic: each item's longest category path, cleaned (HEM / Van Gysel)",
            "search_rule": "each review is a search one with probability search_share (seeded, file order)"}
    atomic_write_text(stats_markdown("amazon (raw reviews)", stats), Path(out_dir) / "stats.md")
    write_prepared(out_dir, items, events, splits, stats, meta)
    log.info("amazon_raw: prepared in %.0f s: %s", time.time() - t0, stats)
