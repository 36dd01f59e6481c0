"""Shared-encoder baselines: the pre-LLM way of unifying search and recommendation (JSR / UniSAR family).

One small model trained from scratch on item ids:

* **History encoder**, shared by both tasks: each history event is its item embedding + a learned recency
  position (0 = the most recent event) and, with ``history_features``, the event's task type and its query's
  bag-of-words vector (how UniSAR-style models see search behaviour in the history). A learned start token
  opens every sequence, so an empty history still has a state. A causal transformer (SASRec style, pre-norm)
  reads the sequence; the user state is its output at the most recent event.
* **Query encoder**: bag of words — the mean embedding of the query's lower-cased, whitespace-split words,
  vocabulary built from the training queries (unknown words are dropped; no known word gives the zero vector).
* **Recommendation head**: score(item) = item embedding · user state (input and output item embeddings shared).
* **Search head**: the user state fused with the query vector, ``s = u + q + MLP([u; q])``, then · item embedding.

Loss: softmax cross-entropy over the whole catalogue (``negatives: 0``) or a sampled softmax with N uniform
negatives shared by the batch (``negatives: N``, accidental hits masked; for large catalogues).

Variants (each a :class:`~gemsbench.methods.base.Method`):

* ``joint_encoder`` — both tasks, loss = L_rec + λ·L_search (UniSAR's λ = 0.1).
* ``sasrec`` — recommendation examples only, item ids only (no task types or queries in the history: SASRec).
  It scores search examples with its recommendation head, i.e. it ignores the query.
* ``search_encoder`` — search examples only, search head only. It scores recommendation examples with the
  search head and their (empty) query: the user state plus a zero query vector.

Training: AdamW in shuffled mini-batches for ``epochs`` (or until ``max_steps``), seeded from the run's seed.
After every epoch the model is scored on the whole validation split, NDCG@10 over the stored candidates
(pessimistic ties, :mod:`gemsbench.evaluate`) averaged over the two tasks; the best epoch is kept and saved
(``model.pt`` + ``checkpoint.json`` with hyper-parameters, vocabulary and best epoch, both written atomically,
the JSON last). ``train_log.jsonl`` gets the per-task training losses every ``log_every`` steps and the
validation metrics after every epoch.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gemsbench.atomic import RETRAIN, DamagedFile, atomic_torch_save, atomic_write_json, read_json, torch_load
from gemsbench.evaluate import evaluate
from gemsbench.methods.base import Method, RunContext, register_method
from gemsbench.methods.hparams import DROPOUT, boolean, integer, number
from gemsbench.train import resolve_device

PAD, START, FIRST_ITEM = 0, 1, 2  # item-embedding rows: padding, start token, then item i at row i + 2
TYPE_OF = {"rec": 1, "search": 2}  # task-type embedding rows; 0 = start token or unknown task

DEFAULTS = {
    "dim": 64,  # hidden size: UniSAR uses 64 (SASRec 50 on MovieLens-1M)
    "layers": 2,  # SASRec: 2 self-attention blocks
    "heads": 2,
    "dropout": 0.2,  # SASRec on the dense MovieLens-1M
    "max_len": 20,  # history events read (the release's history length)
    "history_features": True,  # task type + query vector of each history event
    "negatives": 0,  # 0: full softmax over the catalogue; N > 0: sampled softmax with N shared negatives
    "lr": 1e-3,  # SASRec and UniSAR: Adam, lr 1e-3
    "weight_decay": 0.0,
    "batch_size": 256,
    "epochs": 3,  # passes over the training examples (~1,100 steps on the embedded MovieLens default)
    "max_steps": 0,  # > 0 stops training after this many steps
    "eval_batch_size": 1024,
    "log_every": 50,
}
TYPES = {"dim": integer(1), "layers": integer(1), "heads": integer(1), "dropout": DROPOUT, "max_len": integer(0),
         "history_features": boolean(), "negatives": integer(0), "lr": number(0, low_open=True),
         "weight_decay": number(0), "batch_size": integer(1), "epochs": integer(1), "max_steps": integer(0),
         "eval_batch_size": integer(1), "log_every": integer(1)}


class Featurizer:
    """Turns example rows into padded tensors; the query vocabulary is fixed at training time."""

    def __init__(self, vocab: list[str], max_len: int):
        self.vocab = vocab
        self.word_id = {w: i + 1 for i, w in enumerate(vocab)}  # 0 = padding
        self.max_len = max_len

    @classmethod
    def from_examples(cls, examples: pd.DataFrame, max_len: int) -> "Featurizer":
        words = set()
        for query in pd.unique(pd.Series([*examples["query"], *(q for qs in examples["history_query"] for q in qs)])):
            words.update(str(query).lower().split())
        return cls(sorted(words), max_len)

    def __call__(self, examples: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Tensors of a set of examples: right-padded sequences [N, L] (start token + last ``max_len`` events),
        recency positions, task types, query indices into ``query_words`` [Q, W] (row 0 = empty query)."""
        n, width = len(examples), self.max_len + 1
        items = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        hist_query = np.zeros((n, width), dtype=np.int64)
        positions = np.zeros((n, width), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        query = np.zeros(n, dtype=np.int64)
        queries = {"": 0}
        for r, row in enumerate(examples.itertuples(index=False)):
            hist = list(row.history)[-self.max_len:] if self.max_len else []
            k = len(hist)
            tasks = list(row.history_task)[len(row.history) - k:]
            hq = list(row.history_query)[len(row.history) - k:]
            items[r, 0] = START
            items[r, 1:k + 1] = np.asarray(hist, dtype=np.int64) + FIRST_ITEM
            types[r, 1:k + 1] = [TYPE_OF.get(t, 0) for t in tasks]
            hist_query[r, 1:k + 1] = [queries.setdefault(q, len(queries)) for q in hq]
            positions[r, :k + 1] = np.arange(k, -1, -1)
            lengths[r] = k + 1
            query[r] = queries.setdefault(row.query, len(queries))
        word_lists = [[self.word_id[w] for w in q.lower().split() if w in self.word_id] for q in queries]
        query_words = np.zeros((len(word_lists), max(1, max(map(len, word_lists)))), dtype=np.int64)
        for i, ws in enumerate(word_lists):
            query_words[i, :len(ws)] = ws
        arrays = {"items": items, "types": types, "hist_query": hist_query, "positions": positions,
                  "lengths": lengths, "query": query, "query_words": query_words,
                  "is_search": (examples["task"].to_numpy() == "search"),
                  "target": np.array([int(t[0]) for t in examples["targets"]], dtype=np.int64)}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def take(features: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The features of some rows (the query table is shared, not indexed by row)."""
    return {k: v if k == "query_words" else v[rows] for k, v in features.items()}


class SharedEncoder(nn.Module):
    """History encoder + heads. Parts a variant never uses are not built (SASRec has no query encoder)."""

    def __init__(self, n_items: int, n_words: int, dim: int, layers: int, heads: int, dropout: float,
                 max_len: int, history_features: bool, search_head: bool):
        super().__init__()
        self.n_items = n_items
        self.items = nn.Embedding(n_items + FIRST_ITEM, dim, padding_idx=PAD)
        self.positions = nn.Embedding(max_len + 1, dim)
        self.types = nn.Embedding(len(TYPE_OF) + 1, dim) if history_features else None
        self.words = nn.Embedding(n_words + 1, dim, padding_idx=0) if history_features or search_head else None
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim)) if search_head else None
        for emb in (self.items, self.positions, self.types, self.words):
            if emb is not None:
                # std d^-1/2: a layer-normed user state (norm ~ sqrt(d)) then gives item logits of unit scale
                nn.init.normal_(emb.weight, std=dim ** -0.5)
                if emb.padding_idx is not None:
                    nn.init.zeros_(emb.weight[emb.padding_idx])

    def query_vectors(self, query_words: torch.Tensor) -> torch.Tensor:
        """Mean word embedding per query, [Q, d]; zero for a query without known words."""
        known = (query_words > 0).unsqueeze(-1).float()
        return (self.words(query_words) * known).sum(1) / known.sum(1).clamp(min=1.0)

    def states(self, f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """User states [B, d] (history encoder output at the most recent event) and query vectors [B, d]
        (None without a query encoder)."""
        qv = self.query_vectors(f["query_words"]) if self.words is not None else None
        x = self.items(f["items"]) + self.positions(f["positions"])
        if self.types is not None:
            x = x + self.types(f["types"]) + qv[f["hist_query"]]
        width = x.shape[1]
        causal = torch.triu(torch.ones(width, width, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.encoder(self.dropout(x), mask=causal, src_key_padding_mask=f["items"] == PAD)
        user = self.norm(h[torch.arange(len(h), device=h.device), f["lengths"] - 1])
        return user, None if qv is None else qv[f["query"]]

    def search_state(self, user: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return user + query + self.fuse(torch.cat([user, query], dim=-1))

    def item_table(self) -> torch.Tensor:
        return self.items.weight[FIRST_ITEM:]


class SharedEncoderMethod(Method):
    """Common training and scoring of the three variants; subclasses fix the tasks and heads."""

    #: the tasks whose examples train the model (each through its own head)
    train_tasks: ClassVar[tuple[str, ...]]
    #: head ("rec" or "search") scoring the examples of each task
    score_head: ClassVar[dict[str, str]]

    def loss_weights(self) -> dict[str, float]:
        return {task: 1.0 for task in self.train_tasks}

    def fit(self, ctx: RunContext) -> dict:
        hp, run_dir = self.hparams, Path(ctx.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        device = resolve_device(ctx.device)
        torch.manual_seed(ctx.seed)
        gen = torch.Generator().manual_seed(ctx.seed)
        weights = self.loss_weights()
        all_train = ctx.dataset.splits["train"]
        train = all_train[all_train["task"].isin(self.train_tasks)].reset_index(drop=True)
        if train.empty:
            raise ValueError(f"{self.name}: no training example of task(s) {self.train_tasks}")
        featurizer = Featurizer.from_examples(all_train, hp["max_len"])
        feats = {k: v.to(device) for k, v in featurizer(train).items()}
        model = self._build(featurizer, ctx.dataset.n_items, hp).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        n, bs = len(train), hp["batch_size"]
        total = hp["epochs"] * math.ceil(n / bs)
        if hp["max_steps"] > 0:
            total = min(total, hp["max_steps"])
        step, train_seconds, best = 0, 0.0, {"value": -1.0, "epoch": -1, "state": None, "val": {}}
        window = {"rec": [], "search": [], "t0": time.time()}
        with open(run_dir / "train_log.jsonl", "w") as log:
            for epoch in range(hp["epochs"]):
                if step >= total:
                    break
                order = torch.randperm(n, generator=gen).to(device)
                model.train()
                for start in range(0, n, bs):
                    if step >= total:
                        break
                    t0 = time.time()
                    losses = self._losses(model, take(feats, order[start:start + bs]), gen)
                    loss = sum(weights[t] * v for t, v in losses.items())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    train_seconds += time.time() - t0
                    step += 1
                    for t, v in losses.items():
                        window[t].append(v.item())
                    if step % hp["log_every"] == 0 or step == total:
                        log.write(json.dumps({
                            "step": step, "epoch": epoch,
                            **{f"loss_{t}": (float(np.mean(window[t])) if window[t] else None)
                               for t in ("rec", "search")},
                            "seconds": time.time() - window["t0"]}) + "\n")
                        window = {"rec": [], "search": [], "t0": time.time()}
                val = self._validate(model, featurizer, ctx.dataset.splits["valid"])
                log.write(json.dumps({"step": step, "epoch": epoch, **val}) + "\n")
                log.flush()
                if val["val_ndcg@10"] > best["value"]:
                    best = {"value": val["val_ndcg@10"], "epoch": epoch, "val": val,
                            "state": copy.deepcopy(model.state_dict())}
        atomic_torch_save(best["state"], run_dir / "model.pt")
        atomic_write_json({"method": self.name, "hparams": hp, "vocab": featurizer.vocab,
                           "n_items": ctx.dataset.n_items, "best_epoch": best["epoch"], "valid": best["val"]},
                          run_dir / "checkpoint.json")
        return {"method": self.name, "trainable_parameters": sum(p.numel() for p in model.parameters()),
                "steps": step, "train_seconds": train_seconds, "seconds_per_step": train_seconds / max(step, 1),
                "best_epoch": best["epoch"], "selection": "val_ndcg@10 (mean over tasks)", **best["val"]}

    def load_scorer(self, ctx: RunContext) -> "SharedEncoderScorer":
        run_dir = Path(ctx.run_dir)
        if not (run_dir / "checkpoint.json").exists():
            raise FileNotFoundError(f"{run_dir / 'checkpoint.json'} missing; run the train step for this run first")
        remedy = RETRAIN.format(run_dir=run_dir)
        meta = read_json(run_dir / "checkpoint.json", remedy)
        hp = meta["hparams"]  # the checkpoint describes itself
        featurizer = Featurizer(meta["vocab"], hp["max_len"])
        model = self._build(featurizer, meta["n_items"], hp)
        try:
            model.load_state_dict(torch_load(run_dir / "model.pt", remedy, map_location="cpu"))
        except RuntimeError as e:  # tensors of other names or shapes than checkpoint.json describes
            raise DamagedFile(run_dir / "model.pt", e, remedy) from e
        return SharedEncoderScorer(model.to(resolve_device(ctx.device)), featurizer, self.score_head,
                                   hp["eval_batch_size"])

    def _build(self, featurizer: Featurizer, n_items: int, hp: dict) -> SharedEncoder:
        return SharedEncoder(n_items, len(featurizer.vocab), hp["dim"], hp["layers"], hp["heads"], hp["dropout"],
                             hp["max_len"], hp["history_features"], search_head="search" in self.score_head.values())

    def _losses(self, model: SharedEncoder, f: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Mean cross-entropy of each trained task present in the batch, each task through its own head."""
        user, query = model.states(f)
        out = {}
        for task in self.train_tasks:
            rows = f["is_search"] == (task == "search")
            if not bool(rows.any()):
                continue
            state = model.search_state(user[rows], query[rows]) if task == "search" else user[rows]
            out[task] = self._cross_entropy(model, state, f["target"][rows], gen)
        return out

    def _cross_entropy(self, model: SharedEncoder, state: torch.Tensor, target: torch.Tensor,
                       gen: torch.Generator) -> torch.Tensor:
        table = model.item_table()
        n_neg = self.hparams["negatives"]
        if n_neg <= 0:
            return F.cross_entropy(state @ table.t(), target)
        negatives = torch.randint(model.n_items, (n_neg,), generator=gen).to(state.device)
        pos = (state * table[target]).sum(-1, keepdim=True)
        neg = (state @ table[negatives].t()).masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        return F.cross_entropy(torch.cat([pos, neg], dim=1), torch.zeros_like(target))

    def _validate(self, model: SharedEncoder, featurizer: Featurizer, valid: pd.DataFrame) -> dict:
        scorer = SharedEncoderScorer(model, featurizer, self.score_head, self.hparams["eval_batch_size"])
        rows = evaluate(scorer, valid, protocols=("sampled",), ks=(10,), chunk_size=len(valid), desc="validate")
        by_task = rows.groupby("task")["ndcg@10"].mean()
        return {"val_ndcg@10": float(by_task.mean()), **{f"val_ndcg@10_{t}": float(v) for t, v in by_task.items()}}


class SharedEncoderScorer:
    """Scores every item for examples, each through the head its variant uses for the example's task."""

    def __init__(self, model: SharedEncoder, featurizer: Featurizer, score_head: dict[str, str], batch_size: int):
        self.model, self.featurizer, self.score_head, self.batch_size = model, featurizer, score_head, batch_size

    @torch.no_grad()
    def score(self, examples: pd.DataFrame) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        device = self.model.item_table().device
        out = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples.iloc[i:i + self.batch_size]
            f = {k: v.to(device) for k, v in self.featurizer(chunk).items()}
            user, query = self.model.states(f)
            use_search = torch.tensor([self.score_head[t] == "search" for t in chunk["task"]], device=device)
            state = torch.where(use_search[:, None], self.model.search_state(user, query), user) \
                if bool(use_search.any()) else user
            out.append((state @ self.model.item_table().t()).float().cpu())
        self.model.train(was_training)
        return torch.cat(out)


@register_method("joint_encoder")
class JointEncoder(SharedEncoderMethod):
    """Both tasks on one shared encoder: L_rec + λ·L_search (λ = 0.1, UniSAR)."""

    defaults = {**DEFAULTS, "lambda_search": 0.1}
    hparam_types = {**TYPES, "lambda_search": number(0)}
    train_tasks = ("rec", "search")
    score_head = {"rec": "rec", "search": "search"}

    def loss_weights(self) -> dict[str, float]:
        return {"rec": 1.0, "search": self.hparams["lambda_search"]}


@register_method("sasrec")
class SASRec(SharedEncoderMethod):
    """Recommendation only, item ids only; search examples are scored by the recommendation head."""

    defaults = {**DEFAULTS, "history_features": False}
    hparam_types = TYPES
    train_tasks = ("rec",)
    score_head = {"rec": "rec", "search": "rec"}


@register_method("search_encoder")
class SearchEncoder(SharedEncoderMethod):
    """Search only; recommendation examples are scored by the search head with their empty query."""

    defaults = dict(DEFAULTS)
    hparam_types = TYPES
    train_tasks = ("search",)
    score_head = {"rec": "search", "search": "search"}
