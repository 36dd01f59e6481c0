"""Qilin (Xiaohongshu, SIGIR 2025; Hugging Face ``THUIR/Qilin``, Apache-2.0): real search and recommendation
requests of the same users, with Chinese queries kept as text.

Raw files: the parquet files of the configs ``recommendation_train``, ``recommendation_test``,
``search_train``, ``search_test`` and ``notes``, in the Hugging Face layout ``<root>/<config>/*.parquet``.
Their schema, as the dataset's own tools and the GEMS release read it: a request row has ``user_idx``,
``recent_clicked_note_idxs`` (list of note ids), ``*_result_details_with_idx`` (list of structs with
``note_idx``, ``click`` and the time ``request_timestamp`` / ``search_timestamp``) and, for search, ``query``;
a note row has ``note_idx`` and ``note_title``. A missing field is an error naming file and field.

Preparation, following the GEMS release (``data/qilin/process_step_1.py``); changes marked [ours]. Each
rule is stated exactly in docs/datasets.md, with its reasons:

1. A request is one row of a recommendation or search config (train and test configs pooled, read in the
   order of ``SOURCES``). Its time is the latest time among its results (a timestamp column at the top level
   is used when the structs lack one); its clicked notes are the results with ``click > 0``, its shown notes
   the others.
2. Keep users with at least ``min_requests_per_task`` requests as read in each task.
3. Iterative ``core``-core, at most ``max_core_rounds`` rounds, counted as the release counts: a user needs
   ``core`` requests; a note needs ``core`` occurrences (clicked, shown or in a history list) among the
   requests of the remaining users, and a rarer note leaves every list; a request with no clicked or shown
   note left is dropped; stop when the numbers of qualifying users and notes no longer change.
4. [ours] Requests without a clicked note are dropped: they have nothing to predict (the release keeps
   them, and its evaluation rows then have no target).
5. A (user, task) with fewer than ``min_requests_per_task`` requests left loses them (the release's
   leave-one-out skips it), so a user can end in one task only.
6. The items are the notes clicked or in a history list of the remaining requests; notes only ever shown
   count in step 3 but never become items or negatives.
7. Leave-one-out per user and task over requests by time, ties in read order: last -> test, second last
   -> valid. Each distinct clicked note of a training request is one training example; a valid or test
   request is one example whose targets are all its distinct clicked notes ([ours] the release expands
   validation requests like training ones). Candidates: the targets, then ``num_negatives`` stored negatives.
8. History: the request's own ``recent_clicked_note_idxs``, in the order ``history_order`` says; their task
   and query are unknown (""). [ours] So that no evaluation target enters a training input, a training
   history leaves out the user's valid and test targets and a validation history the test targets (counted
   per request over the whole list in ``history_notes_masked``); then the last ``max_history`` notes are kept.
9. [ours] Negatives exclude every item the user clicked or had in a history list of any of their requests
   as read, not only the example's history and targets as in the release: such a note is a false negative.

Memory: the request table and three flat integer arrays (request, note, kind) over every note occurrence,
read in batches of ``BATCH_ROWS`` rows with only the needed columns.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ..atomic import atomic_write_text
from .build import add_candidates, assign_loo_splits, compute_stats
from .prepared import TASKS, PreparedDataError, register_dataset, write_prepared
from .rawio import (examples_frame, loader_params, mean_history_length, require_fields,
                    resolve_files, stats_markdown)

log = logging.getLogger(__name__)

HINT = ("Qilin is at https://huggingface.co/datasets/THUIR/Qilin (parquet): download the configs "
        "recommendation_train, recommendation_test, search_train, search_test and notes, keep the layout "
        "<root>/<config>/*.parquet and set `root` (or a path/glob per config); see docs/datasets.md.")
CONFIGS = ("recommendation_train", "recommendation_test", "search_train", "search_test", "notes")
DEFAULTS = {"root": None, **{c: f"{c}/*.parquet" for c in CONFIGS}, "max_history": 20, "num_negatives": 99,
            "seed": 42, "min_requests_per_task": 3, "core": 3, "max_core_rounds": 10,
            "history_order": "oldest_first"}
HISTORY_ORDERS = ("oldest_first", "newest_first")
HISTORY = "recent_clicked_note_idxs"
BATCH_ROWS = 65_536
CLICK, SHOWN, HISTORY_NOTE = 0, 1, 2  # kinds of note occurrence


@dataclass(frozen=True)
class Source:
    config: str
    task: str
    details: str
    timestamp: str
    query: str | None


SOURCES = (
    Source("recommendation_train", "rec", "rec_result_details_with_idx", "request_timestamp", None),
    Source("recommendation_test", "rec", "rec_result_details_with_idx", "request_timestamp", None),
    Source("search_train", "search", "search_result_details_with_idx", "search_timestamp", "query"),
    Source("search_test", "search", "search_result_details_with_idx", "search_timestamp", "query"),
)


@dataclass
class Requests:
    """Requests as read (one entry per request, in read order) and every note occurrence as flat arrays."""
    user: np.ndarray  # raw user_idx
    task: np.ndarray  # index into TASKS
    ts: np.ndarray
    query: list[str]
    occ_request: np.ndarray  # index of the request of each occurrence
    occ_note: np.ndarray  # raw note_idx
    occ_kind: np.ndarray  # CLICK, SHOWN or HISTORY_NOTE


def _is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def _check_schema(schema: pa.Schema, src: Source, path: Path) -> bool:
    """Check a request file's fields; return whether the timestamp lives in the result structs."""
    needed = ["user_idx", HISTORY, src.details] + ([src.query] if src.query else [])
    require_fields(schema.names, needed, path, f"the {src.config} file", HINT)
    for name in (HISTORY, src.details):
        if not _is_list(schema.field(name).type):
            raise PreparedDataError(f"{path}: field `{name}` should be a list, found {schema.field(name).type}. {HINT}")
    value_type = schema.field(src.details).type.value_type
    if not pa.types.is_struct(value_type):
        raise PreparedDataError(f"{path}: field `{src.details}` should be a list of structs (note_idx, click, "
                              f"{src.timestamp}, ...), found {schema.field(src.details).type}. {HINT}")
    struct_fields = [f.name for f in value_type]
    require_fields(struct_fields, ["note_idx", "click"], path, f"the structs of `{src.details}`", HINT)
    if src.timestamp in struct_fields:
        return True
    if src.timestamp in schema.names:
        return False
    raise PreparedDataError(f"{path}: no `{src.timestamp}`, neither in the structs of `{src.details}` "
                          f"({struct_fields}) nor as a column ({schema.names}). {HINT}")


def _int64(arr: pa.Array, path: Path, field: str) -> np.ndarray:
    if arr.null_count:
        raise PreparedDataError(f"{path}: field `{field}` has {arr.null_count} missing value(s). {HINT}")
    return pc.cast(arr, pa.int64(), safe=False).to_numpy()


def _read_batch(batch: pa.RecordBatch, src: Source, ts_in_struct: bool, path: Path):
    """Arrays of one batch: user, ts, queries, and (request, note, kind) per note occurrence."""
    n = batch.num_rows
    user = _int64(batch.column("user_idx"), path, "user_idx")
    details = batch.column(src.details)
    parent = pc.list_parent_indices(details).to_numpy()
    results = pc.list_flatten(details)
    note = _int64(pc.struct_field(results, "note_idx"), path, f"{src.details}.note_idx")
    click = pc.fill_null(pc.cast(pc.struct_field(results, "click"), pa.float64()), 0.0).to_numpy() > 0
    if ts_in_struct:
        result_ts = _int64(pc.struct_field(results, src.timestamp), path, f"{src.details}.{src.timestamp}")
        ts = np.full(n, np.iinfo(np.int64).min)  # a request without results has no click and is dropped
        np.maximum.at(ts, parent, result_ts)
    else:
        ts = _int64(batch.column(src.timestamp), path, src.timestamp)
    hist = batch.column(HISTORY)
    hist_parent = pc.list_parent_indices(hist).to_numpy()
    hist_notes = pc.list_flatten(hist)
    present = hist_notes.is_valid().to_numpy(zero_copy_only=False)
    hist_notes = pc.cast(hist_notes.filter(present), pa.int64(), safe=False).to_numpy()
    queries = ([(q or "").strip() for q in batch.column(src.query).to_pylist()] if src.query else [""] * n)
    occ_request = np.concatenate([parent, hist_parent[present]])
    occ_note = np.concatenate([note, hist_notes])
    occ_kind = np.concatenate([np.where(click, CLICK, SHOWN), np.full(len(hist_notes), HISTORY_NOTE)])
    return user, ts, queries, occ_request, occ_note, occ_kind.astype(np.int8)


def read_requests(files: dict[str, list[Path]]) -> Requests:
    """Read every request file batch by batch, keeping only the needed columns."""
    parts, queries, start = [], [], 0
    for src in SOURCES:
        for path in files[src.config]:
            pf = pq.ParquetFile(path)
            ts_in_struct = _check_schema(pf.schema_arrow, src, path)
            columns = ["user_idx", HISTORY, src.details] + ([src.query] if src.query else [])
            columns += [] if ts_in_struct else [src.timestamp]
            with tqdm(total=pf.metadata.num_rows, unit="req", desc=f"qilin {src.config}") as bar:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    user, ts, q, occ_request, occ_note, occ_kind = _read_batch(batch, src, ts_in_struct, path)
                    parts.append((user, np.full(len(user), TASKS.index(src.task), np.int8), ts,
                                  occ_request + start, occ_note, occ_kind))
                    queries += q
                    start += len(user)
                    bar.update(len(user))
    user, task, ts, occ_request, occ_note, occ_kind = (np.concatenate([p[i] for p in parts]) for i in range(6))
    return Requests(user, task, ts, queries, occ_request, occ_note, occ_kind)


def core_filter(req: Requests, *, min_requests_per_task: int, core: int, max_rounds: int):
    """Steps 2-3 of the module docstring. Returns (request kept, occurrence kept, rounds run)."""
    users, ucode = np.unique(req.user, return_inverse=True)
    notes, ncode = np.unique(req.occ_note, return_inverse=True)
    per_task = np.bincount(ucode * len(TASKS) + req.task, minlength=len(users) * len(TASKS))
    alive = (per_task.reshape(-1, len(TASKS)) >= min_requests_per_task).all(axis=1)[ucode]
    occ_alive = np.ones(len(ncode), dtype=bool)
    previous, rounds = None, 0
    for rounds in range(1, max_rounds + 1):
        user_ok = np.bincount(ucode[alive], minlength=len(users)) >= core
        alive &= user_ok[ucode]
        note_ok = np.bincount(ncode[occ_alive & alive[req.occ_request]], minlength=len(notes)) >= core
        occ_alive &= note_ok[ncode]
        results = occ_alive & (req.occ_kind != HISTORY_NOTE) & alive[req.occ_request]
        alive &= np.bincount(req.occ_request[results], minlength=len(alive)) > 0
        state = (int(user_ok.sum()), int(note_ok.sum()))
        if state == previous:
            break
        previous = state
    return alive, occ_alive & alive[req.occ_request], rounds


def _grouped(request_ids: np.ndarray, values: np.ndarray) -> dict[int, list[int]]:
    """{request: its values in their original order}."""
    if not len(request_ids):
        return {}
    order = np.argsort(request_ids, kind="stable")
    request_ids, values = request_ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, request_ids[1:] != request_ids[:-1]])
    return {int(r): v.tolist() for r, v in zip(request_ids[starts], np.split(values, starts[1:]))}


def read_titles(files: list[Path], note_ids: np.ndarray) -> dict[int, str]:
    """``note_title`` of the given notes, read batch by batch."""
    titles: dict[int, str] = {}
    for path in files:
        pf = pq.ParquetFile(path)
        require_fields(pf.schema_arrow.names, ["note_idx", "note_title"], path, "the notes file", HINT)
        with tqdm(total=pf.metadata.num_rows, unit="note", desc="qilin notes") as bar:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=["note_idx", "note_title"]):
                ids = _int64(batch.column("note_idx"), path, "note_idx")
                wanted = np.isin(ids, note_ids)
                for note, title in zip(ids[wanted].tolist(), batch.column("note_title").filter(wanted).to_pylist()):
                    titles[note] = (title or "").strip()
                bar.update(batch.num_rows)
    return titles


def task_minimum(req: Requests, kept: np.ndarray, min_requests_per_task: int) -> np.ndarray:
    """Step 5: the kept requests of a (user, task) with at least ``min_requests_per_task`` kept requests."""
    users, ucode = np.unique(req.user, return_inverse=True)
    key = ucode * len(TASKS) + req.task
    return kept & (np.bincount(key[kept], minlength=len(users) * len(TASKS))[key] >= min_requests_per_task)


def build_qilin(req: Requests, kept: np.ndarray, occ_kept: np.ndarray, *, min_requests_per_task: int,
                max_history: int, history_order: str):
    """Steps 4-9: items, events and examples from the filtered requests. Returns (item raw ids, events,
    splits without candidates, {user: items the user clicked or had in a history list}, statistics of this
    step)."""
    clicked = occ_kept & (req.occ_kind == CLICK)
    kept = kept & (np.bincount(req.occ_request[clicked], minlength=len(kept)) > 0)
    kept = task_minimum(req, kept, min_requests_per_task)
    used = occ_kept & kept[req.occ_request] & (req.occ_kind != SHOWN)
    item_raw = np.unique(req.occ_note[used])  # sorted, so a note's item id is its rank
    clicks = _grouped(req.occ_request[used & clicked], np.searchsorted(item_raw, req.occ_note[used & clicked]))
    histories = _grouped(req.occ_request[used & ~clicked],
                         np.searchsorted(item_raw, req.occ_note[used & ~clicked]))

    ids = np.flatnonzero(kept)
    table = pd.DataFrame({"request": ids, "raw_user": req.user[ids], "task": np.asarray(TASKS)[req.task[ids]],
                          "ts": req.ts[ids], "query": [req.query[i] for i in ids]})
    table["user"] = np.unique(table["raw_user"], return_inverse=True)[1]
    table = table.sort_values(["user", "ts", "request"], kind="stable")
    table = assign_loo_splits(table)
    targets = {r: list(dict.fromkeys(clicks[r])) for r in table["request"].tolist()}
    eval_targets: dict[tuple[int, str], set] = {}
    for r, user, split in zip(table["request"], table["user"], table["split"]):
        if split != "train":
            eval_targets.setdefault((int(user), split), set()).update(targets[int(r)])

    events, rows, masked = [], {"train": [], "valid": [], "test": []}, 0
    for r in tqdm(table.itertuples(index=False), total=len(table), unit="req", desc="qilin examples"):
        user = int(r.user)
        hidden = set()
        for later in {"train": ("valid", "test"), "valid": ("test",), "test": ()}[r.split]:
            hidden |= eval_targets.get((user, later), set())
        history = histories.get(r.request, [])
        history = history[::-1] if history_order == "newest_first" else history
        visible = [h for h in history if h not in hidden]
        masked += len(history) - len(visible)
        visible = visible[-max_history:]
        query = r.query if r.task == "search" else ""
        groups = [[t] for t in targets[r.request]] if r.split == "train" else [targets[r.request]]
        for group in groups:
            rows[r.split].append((user, r.task, query, visible, [""] * len(visible), [""] * len(visible), group,
                                  int(r.ts)))
        events += [(user, t, int(r.ts), r.task, query, r.split) for t in targets[r.request]]
    events = pd.DataFrame(events, columns=["user", "item", "ts", "task", "query", "split"])
    requests = table["task"].value_counts()
    user_tasks = events.groupby("user")["task"].agg(frozenset)
    step_stats = {"rec_requests": int(requests.get("rec", 0)), "search_requests": int(requests.get("search", 0)),
                  "history_notes_masked": masked, "users_rec_only": int((user_tasks == {"rec"}).sum()),
                  "users_search_only": int((user_tasks == {"search"}).sum())}
    return (item_raw, events, {s: examples_frame(v) for s, v in rows.items()},
            _interacted(req, item_raw, np.unique(table["raw_user"])), step_stats)


def _interacted(req: Requests, item_raw: np.ndarray, raw_users: np.ndarray) -> dict[int, set]:
    """Step 9: {user: the items among the notes the user clicked or had in a history list}, over every request
    of the user as read (kept or not, whole history lists); users numbered by their rank in ``raw_users``."""
    occ_user = req.user[req.occ_request]
    mask = (req.occ_kind != SHOWN) & np.isin(req.occ_note, item_raw) & np.isin(occ_user, raw_users)
    pairs = pd.DataFrame({"user": np.searchsorted(raw_users, occ_user[mask]),
                          "item": np.searchsorted(item_raw, req.occ_note[mask])}).drop_duplicates()
    return pairs.groupby("user")["item"].agg(set).to_dict()


@register_dataset("qilin")
def prepare_qilin(params: dict, out_dir: Path) -> None:
    p = loader_params("qilin", params, DEFAULTS)
    if p["history_order"] not in HISTORY_ORDERS:
        raise PreparedDataError(f"qilin history_order {p['history_order']!r} is not one of {HISTORY_ORDERS}")
    files = {c: resolve_files(p[c], p["root"], f"Qilin config `{c}`", HINT) for c in CONFIGS}
    t0 = time.time()
    req = read_requests(files)
    log.info("qilin: read %d requests, %d note occurrences in %.0f s", len(req.user), len(req.occ_note),
             time.time() - t0)
    kept, occ_kept, rounds = core_filter(req, min_requests_per_task=p["min_requests_per_task"], core=p["core"],
                                         max_rounds=p["max_core_rounds"])
    item_raw, events, splits, interacted, step_stats = build_qilin(
        req, kept, occ_kept, min_requests_per_task=p["min_requests_per_task"], max_history=p["max_history"],
        history_order=p["history_order"])
    if events.empty:
        raise PreparedDataError(f"qilin: no request survives the filters (min_requests_per_task="
                              f"{p['min_requests_per_task']}, core={p['core']}); check the input files. {HINT}")
    titles = read_titles(files["notes"], item_raw)
    items = pd.DataFrame({"item": np.arange(len(item_raw)), "raw_id": [str(i) for i in item_raw],
                          "title": [titles.get(int(i), "") for i in item_raw], "query": ""})
    splits, excluded = add_candidates(splits, events, len(items), p["num_negatives"], p["seed"], interacted)
    stats = {**compute_stats(items, events, splits), **excluded, **step_stats, "core_rounds": rounds,
             "mean_history_length": mean_history_length(splits),
             "items_missing_from_notes": int(sum(int(i) not in titles for i in item_raw))}
    meta = {"dataset": "qilin", "loader": "qilin", "params": p, "source": "Hugging Face THUIR/Qilin",
            "files": {c: [str(f) for f in fs] for c, fs in files.items()}}
    atomic_write_text(stats_markdown("qilin", stats), Path(out_dir) / "stats.md")
    write_prepared(out_dir, items, events, splits, stats, meta)
    log.info("qilin: prepared in %.0f s: %s", time.time() - t0, stats)
