"""Shared-encoder baselines: features, learning, scoring per variant, checkpoint reload, determinism."""
import json

import pandas as pd
import pytest
import torch

from baselines.shared_encoder import FIRST_ITEM, START, Featurizer, JointEncoder, SASRec, SearchEncoder
from gemsbench.evaluate import evaluate
from gemsbench.methods.base import RunContext

TINY = {"dim": 16, "layers": 1, "heads": 2, "batch_size": 16, "epochs": 3, "log_every": 1, "eval_batch_size": 64}


def fit(cls, dataset, run_dir, seed=3, **hp):
    method = cls({**TINY, **hp})
    ctx = RunContext(dataset, run_dir, seed=seed, hparams=method.hparams, train={})
    return method, ctx, method.fit(ctx)


def example(history, tasks, queries, task="search", query="red blue"):
    return {"example_id": 0, "user": 0, "task": task, "query": query, "history": history, "history_task": tasks,
            "history_query": queries, "targets": [1], "candidates": [], "ts": 0}


def test_features_keep_the_last_events_with_recency_positions_and_known_words():
    fz = Featurizer(["blue", "red"], max_len=2)
    f = fz(pd.DataFrame([example([4, 5, 6], ["rec", "search", "rec"], ["", "red green", ""]),
                         example([], [], [], task="rec", query="")]))
    assert f["items"].tolist() == [[START, 5 + FIRST_ITEM, 6 + FIRST_ITEM], [START, 0, 0]]
    assert f["positions"].tolist() == [[2, 1, 0], [0, 0, 0]]
    assert f["lengths"].tolist() == [3, 1] and f["types"].tolist() == [[0, 2, 1], [0, 0, 0]]
    words = f["query_words"]
    assert words[f["hist_query"][0, 1]].tolist() == [2, 0]  # "red green": only the known word
    assert sorted(words[f["query"][0]].tolist()) == [1, 2]  # "red blue"
    assert words[f["query"][1]].tolist() == [0, 0] and f["is_search"].tolist() == [True, False]


@pytest.mark.parametrize("cls,hp", [(JointEncoder, {}), (JointEncoder, {"negatives": 8}), (SASRec, {}),
                                    (SearchEncoder, {})])
def test_training_loss_falls_and_scores_have_the_catalogue_shape(cls, hp, synthetic_dataset, tmp_path):
    method, ctx, summary = fit(cls, synthetic_dataset, tmp_path, epochs=6, lr=1e-2, **hp)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = pd.DataFrame([e for e in log if "val_ndcg@10" not in e])
    for task in cls.train_tasks:
        per_epoch = steps.groupby("epoch")[f"loss_{task}"].mean()
        assert per_epoch.iloc[-1] < 0.9 * per_epoch.iloc[0]
    for task in {"rec", "search"} - set(cls.train_tasks):
        assert steps[f"loss_{task}"].isna().all()
    assert sum("val_ndcg@10" in e for e in log) == 6 and summary["steps"] == steps["step"].iloc[-1]
    valid = synthetic_dataset.splits["valid"]
    scores = method.load_scorer(ctx).score(valid)
    assert scores.shape == (len(valid), synthetic_dataset.n_items) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


def test_reloaded_checkpoint_reproduces_the_best_epoch_and_seeded_fits_are_identical(synthetic_dataset, tmp_path):
    method, ctx, summary = fit(JointEncoder, synthetic_dataset, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    assert meta["best_epoch"] == summary["best_epoch"] and meta["hparams"] == method.hparams
    rows = evaluate(method.load_scorer(ctx), synthetic_dataset.splits["valid"], protocols=("sampled",), ks=(10,))
    by_task = rows.groupby("task")["ndcg@10"].mean()
    assert float(by_task.mean()) == pytest.approx(summary["val_ndcg@10"], abs=1e-9)

    fit(JointEncoder, synthetic_dataset, tmp_path / "b")
    fit(JointEncoder, synthetic_dataset, tmp_path / "c", seed=4)
    a, b, c = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_each_variant_scores_with_its_documented_head(synthetic_dataset, tmp_path):
    valid = synthetic_dataset.splits["valid"]
    search = valid[valid["task"] == "search"].head(4)
    other_query = search.assign(query="unknown words only")
    rec_as_search = valid[valid["task"] == "rec"].head(4).assign(task="search")
    rec = valid[valid["task"] == "rec"].head(4)
    scorers = {cls: cls({**TINY, "epochs": 1}).load_scorer(fit(cls, synthetic_dataset, tmp_path / cls.name,
                                                               epochs=1)[1])
               for cls in (JointEncoder, SASRec, SearchEncoder)}
    # SASRec ignores the query; the joint and search encoders read it
    assert torch.equal(scorers[SASRec].score(search), scorers[SASRec].score(other_query))
    for cls in (JointEncoder, SearchEncoder):
        assert not torch.allclose(scorers[cls].score(search), scorers[cls].score(other_query))
    # the search encoder scores a recommendation example as a search with an empty query
    assert torch.equal(scorers[SearchEncoder].score(rec), scorers[SearchEncoder].score(rec_as_search))
    assert not torch.allclose(scorers[JointEncoder].score(rec), scorers[JointEncoder].score(rec_as_search))
