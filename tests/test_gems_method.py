"""GEMS and its ablations as harness methods: they train in both formats, resume exactly, refuse a null space
that matches no layer, and the input-side null space keeps layers' outputs on general text in place."""
import json
import math

import pytest
import torch

from gems import find_target_modules
import gemsbench.train
from gemsbench.backbone import load_backbone
from gemsbench.config import run_knowledge_space
from gemsbench.knowledge import KnowledgeSpace, knowledge_space_path, load_knowledge_space
from gemsbench.methods.base import RunContext
from gemsbench.methods.registry import build_method

TRAIN = {"max_steps": 4, "batch_size": 4, "eval_every": 4, "val_examples": 4, "precision": "fp32", "selection": "last"}
TINY = {"source": "tiny_llama"}
SMALL = {"rank": 8, "update_gap": 2}  # tiny widths are 16-64: rank 8 keeps a genuine subspace
TASKS = {"task_rank": 4}
KNOWLEDGE = {"knowledge_articles": 3, "knowledge_max_tokens": 48}
HPARAMS = {"gems": {**SMALL, **TASKS, **KNOWLEDGE}, "gems_no_msd": {**SMALL, **KNOWLEDGE},
           "gems_no_nsp": {**SMALL, **TASKS}, "galore": dict(SMALL)}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One knowledge-space cache for the module: the first null-space run collects it, the others read it."""
    return tmp_path_factory.mktemp("cache")


def context(ds, run_dir, cache_root, fmt="timeline", **train):
    return RunContext(ds, run_dir, seed=3, hparams={}, train={**TRAIN, "format": fmt, **train},
                      backbone={**TINY, "cache_root": str(cache_root)}, loop=gemsbench.train)


def trained_weights(run_dir) -> dict[str, torch.Tensor]:
    """The final weights: with selection "last" the best checkpoint is the last step's."""
    return torch.load(run_dir / "checkpoint" / "best.pt", weights_only=True)


def initial_weights() -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in load_backbone(TINY).model.named_parameters()}


@pytest.mark.parametrize("fmt", ["timeline", "prompt"])
@pytest.mark.parametrize("name", ["gems", "gems_no_msd", "gems_no_nsp", "galore"])
def test_method_trains_every_weight(name, fmt, synthetic_dataset, cache_root, tmp_path):
    method = build_method(name, HPARAMS[name])
    summary = method.fit(context(synthetic_dataset, tmp_path, cache_root, fmt))
    assert summary["steps"] == 4 and summary["trainable_parameters"] == sum(
        p.numel() for p in load_backbone(TINY).model.parameters()) + 40 * 32  # + one token per item
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(e[k]) for e in log for k in ("loss_rec", "loss_search") if e[k] is not None)
    assert log[0]["refreshes"] > 0 and log[1]["refreshes"] == 0 and log[2]["refreshes"] > 0  # gap 2
    if method.multi_subspace:
        mixed = [e for e in log if e["n_rec"] and e["n_search"]]
        assert mixed and all(0 < e["gate_rec"] < 1 and e["gate_rec"] + e["gate_search"] == 1 for e in mixed)
    else:
        assert "gate_rec" not in log[0]
    assert (tmp_path / "null_space.json").exists() == method.needs_knowledge_space
    before, after = initial_weights(), trained_weights(tmp_path)
    for layer in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight",
                  "model.norm.weight"):
        assert not torch.equal(before[layer], after[layer]), layer
    embeddings = after["model.embed_tokens.weight"]
    assert not torch.equal(before["model.embed_tokens.weight"], embeddings[:before["model.embed_tokens.weight"].shape[0]])


def test_null_space_report_and_dag_agree_on_the_knowledge_space(synthetic_dataset, cache_root, tmp_path):
    method = build_method("gems", {**HPARAMS["gems"], "null_side": "input", "null_rule": "energy"})
    method.fit(context(synthetic_dataset, tmp_path, cache_root, max_steps=1))
    report = json.loads((tmp_path / "null_space.json").read_text())
    assert len(report["layers"]) == 14 and {r["side"] for r in report["layers"]} == {"input"}
    assert all(0 < r["null_dim"] < r["total_dim"] for r in report["layers"])
    assert {t["layer_type"] for t in report["by_layer_type"]} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                   "gate_proj", "up_proj", "down_proj"}
    space = KnowledgeSpace("enwiki_gensim", 3, 48)
    config = {"methods": {"g": {"method": "gems", "hparams": HPARAMS["gems"]}, "l": {"method": "galore"}}}
    assert run_knowledge_space(config, "g") == space and run_knowledge_space(config, "l") is None
    assert report["knowledge_space"] == str(knowledge_space_path(cache_root, TINY, space))


def test_null_space_that_matches_no_layer_fails(synthetic_dataset, cache_root, tmp_path):
    with pytest.raises(ValueError, match="matches the target names"):
        build_method("gems", {**HPARAMS["gems"], "targets": ["query", "value"]}).fit(
            context(synthetic_dataset, tmp_path / "a", cache_root))
    # a cached knowledge space made for other layers is refused, not silently skipped
    space = KnowledgeSpace("enwiki_gensim", 2, 16)
    path = knowledge_space_path(cache_root, TINY, space)
    from gems import save_second_moments
    save_second_moments(path, {"other-model::layer::0": torch.eye(4)})
    with pytest.raises(ValueError, match="no decomposition for 14 targeted layer"):
        build_method("gems", {**HPARAMS["gems"], "knowledge_articles": 2, "knowledge_max_tokens": 16}).fit(
            context(synthetic_dataset, tmp_path / "b", cache_root))


def test_interrupted_and_resumed_gems_run_ends_with_identical_weights(synthetic_dataset, cache_root, tmp_path):
    settings = dict(max_steps=6, checkpoint_every=3)
    hparams = {**HPARAMS["gems"], "update_gap": 4, "svd": "randomized", "moment_policy": "reproject"}
    build_method("gems", hparams).fit(context(synthetic_dataset, tmp_path / "a", cache_root, **settings))
    want = trained_weights(tmp_path / "a")

    crashing = build_method("gems", hparams)
    real_step, taken = crashing.optimizer_step, []

    def crash_at_step_4(optimizer, task_grads):  # an interruption after the checkpoint of step 3
        if len(taken) == 4:
            raise KeyboardInterrupt
        taken.append(1)
        return real_step(optimizer, task_grads)

    crashing.optimizer_step = crash_at_step_4
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(context(synthetic_dataset, tmp_path / "b", cache_root, **settings))
    summary = build_method("gems", hparams).fit(context(synthetic_dataset, tmp_path / "b", cache_root, **settings))
    assert summary["resumed"] and summary["steps"] == 6
    got = trained_weights(tmp_path / "b")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def output_movement(before, after, moments) -> float:
    """Mean squared change of the targeted layers' outputs on the knowledge corpus per unit of squared weight
    change: Σ tr(ΔW K ΔWᵀ) / Σ ‖ΔW‖² over layers, with K the second moment of each layer's corpus inputs."""
    moved = norm = 0.0
    for name, K in moments.items():
        delta = (after[f"{name}.weight"] - before[f"{name}.weight"]).double()
        moved += float(torch.trace(delta @ K.double() @ delta.T))
        norm += float(delta.square().sum())
    return moved / norm


def test_input_side_null_space_keeps_outputs_on_general_text(synthetic_dataset, cache_root, tmp_path):
    """The input-side null space guarantees ΔW·x ≈ 0 for corpus inputs x. Measured as output movement per unit
    of weight change, GEMS must move its layers' corpus outputs at most 2 % as much as the same run without
    the projection. The null directions hold ≤ 0.1 % of K's trace (energy rule 0.999): the ratio measures
    ~0.3 %, and ~97 % with an output-side projector, which gives no such guarantee. Weight decay is off: it
    shrinks W in every direction and is not projected, by design."""
    common = {"weight_decay": 0.0, "lr": 1e-2}
    with_nsp = build_method("gems", {**HPARAMS["gems"], **common, "null_side": "input", "null_rule": "energy",
                                     "null_energy": 0.999})
    with_nsp.fit(context(synthetic_dataset, tmp_path / "nsp", cache_root))
    without = build_method("gems_no_nsp", {**HPARAMS["gems_no_nsp"], **common})
    without.fit(context(synthetic_dataset, tmp_path / "plain", cache_root))
    before = initial_weights()
    layers = list(find_target_modules(load_backbone(TINY).model))
    path = knowledge_space_path(cache_root, TINY, with_nsp.knowledge_space())
    moments = load_knowledge_space(path, TINY, with_nsp.knowledge_space(), "input", layers)
    protected = output_movement(before, trained_weights(tmp_path / "nsp"), moments)
    free = output_movement(before, trained_weights(tmp_path / "plain"), moments)
    assert protected < 0.02 * free, (protected, free)


@pytest.mark.parametrize("name", ["gems", "gems_no_nsp"])
def test_prompt_runs_are_unchanged_by_the_one_pass_row_split(name, synthetic_dataset, cache_root, tmp_path,
                                                             monkeypatch):
    """The same run with task gradients from one backward pass split by rows (the default) and from one pass per
    task subset (the reference): the same losses, gates, validation metrics and final weights, to float
    tolerance (four steps, two basis refreshes: short enough for float32 SVD bases to agree)."""
    from gemsbench.train import Loop

    runs = {}
    for split_rows in (True, False):
        monkeypatch.setattr(Loop, "split_rows", split_rows)
        run_dir = tmp_path / str(split_rows)
        hparams = {**HPARAMS[name], "rank": 2, "task_rank": 1}
        build_method(name, hparams).fit(context(synthetic_dataset, run_dir, cache_root, "prompt", batch_size=8,
                                                grad_accum=2, batch_tokens=64))
        log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        runs[split_rows] = log, trained_weights(run_dir)
    (log, weights), (ref_log, ref_weights) = runs[True], runs[False]
    assert [e["passes"] for e in log] == [e["passes"] for e in ref_log] and log[0]["passes"] > 2  # accumulation
    for e, r in zip(log, ref_log):
        for key in ("loss_rec", "loss_search", "gate_rec", "val_ndcg@5", "val_loss"):
            assert (e.get(key) is None) == (r.get(key) is None), key
            if e.get(key) is not None:
                assert e[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), (e["step"], key)
    for key, w in ref_weights.items():
        torch.testing.assert_close(weights[key], w, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("fmt", ["prompt", "timeline"])
def test_gems_steps_alike_with_the_joint_gradient_derived_by_the_optimizer(fmt, synthetic_dataset, cache_root,
                                                                             tmp_path, monkeypatch):
    """The loop leaves the targeted weights' p.grad None and the optimizer forms each joint gradient from the
    task gradients as it steps the weight: the same run as with the loop's full-size joint gradients (the same
    lerp of the same tensors). Clipping then measures the norm of what the optimizer will form."""
    from gemsbench.methods.gems_methods import SubspaceMethod
    from gemsbench.train import Loop

    weights = {}
    for derived in (True, False):
        if not derived:
            monkeypatch.setattr(SubspaceMethod, "joint_from_task_gradients", lambda self, opt: [])
        run_dir = tmp_path / str(derived)
        build_method("gems", HPARAMS["gems"]).fit(context(synthetic_dataset, run_dir, cache_root, fmt, max_steps=3,
                                                          max_grad_norm=1e9))
        weights[derived] = trained_weights(run_dir)
    for key, w in weights[False].items():
        torch.testing.assert_close(weights[True][key], w, rtol=1e-6, atol=1e-8, msg=key)

    monkeypatch.undo()
    loop = Loop(build_method("gems_no_nsp", HPARAMS["gems_no_nsp"]),
                context(synthetic_dataset, tmp_path / "clip", cache_root, fmt, max_grad_norm=0.05))
    batches = loop.micro_batches(0)
    counts = [(int((b["label_task"] == 0).sum()), int((b["label_task"] == 1).sum())) for b in batches]
    n_rec, n_search = sum(c[0] for c in counts), sum(c[1] for c in counts)
    tg = loop.task_backward(batches, n_rec, n_search)
    targeted = {id(p) for p in loop.joint_free}
    assert targeted and all((p.grad is None) == (id(p) in targeted) for p in loop.params)
    joint = [torch.lerp(r, s, n_search / (n_rec + n_search)) for r, s in zip(tg.rec, tg.search)]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in joint])))
    assert norm > 0.05
    rec = [r.clone() for r in tg.rec]
    loop.clip(tg)
    for before, after in zip(rec, tg.rec):
        torch.testing.assert_close(after, before * (0.05 / (norm + 1e-6)), rtol=1e-5, atol=1e-9)
    for p, g in zip(loop.params, joint):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, g * (0.05 / (norm + 1e-6)), rtol=1e-5, atol=1e-9)
