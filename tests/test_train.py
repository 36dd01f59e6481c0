"""The shared loop: per-task gradient identity, exact resume, determinism (faults and their handling:
tests/test_faults.py)."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gemsbench.train
from gemsbench.methods.base import RunContext
from gemsbench.methods.registry import build_method
from gemsbench.formats import count_labels, subset_batch
from gemsbench.train import Loop, load_trainable_state

TRAIN = {"max_steps": 6, "batch_size": 4, "eval_every": 3, "val_examples": 6, "precision": "fp32"}


def context(ds, tmp_path, fmt="timeline", source="tiny_llama", **train):
    return RunContext(ds, tmp_path, seed=5, hparams={}, train={**TRAIN, "format": fmt, **train},
                      backbone={"source": source}, loop=gemsbench.train)


@pytest.mark.parametrize("fmt,source", [("timeline", "tiny_llama"), ("prompt", "tiny_llama"), ("prompt", "tiny_t5")])
def test_two_task_passes_give_the_joint_gradient(fmt, source, synthetic_dataset, tmp_path):
    """Joint gradient derived from the two task passes == gradient of the whole-batch token-mean loss."""
    loop = Loop(build_method("full_ft", {"lr": 1e-3}), context(synthetic_dataset, tmp_path, fmt, source,
                                                                grad_accum=2))
    loop.model.eval()  # dropout off (T5 has it) so the passes are comparable
    batches = loop.micro_batches(0)
    counts = [(int((b["label_task"] == 0).sum()), int((b["label_task"] == 1).sum())) for b in batches]
    n_rec, n_search = sum(c[0] for c in counts), sum(c[1] for c in counts)
    assert n_rec > 0 and n_search > 0
    loop.joint_backward(batches, n_rec, n_search)
    whole = [p.grad.clone() for p in loop.params]
    loop.optimizer.zero_grad(set_to_none=True)
    tg = loop.task_backward(batches, n_rec, n_search)
    for p, g in zip(loop.params, whole):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    # and each task gradient is that task's own loss gradient
    loop.optimizer.zero_grad(set_to_none=True)
    total = sum(loop.losses(b)[0] for b in batches) / n_rec
    total.backward()
    for p, g in zip(loop.params, tg.rec):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt,source", [("timeline", "tiny_llama"), ("prompt", "tiny_llama"), ("prompt", "tiny_t5")])
def test_a_steps_gradient_does_not_depend_on_how_it_is_split_into_passes(fmt, source, synthetic_dataset, tmp_path):
    """One padded pass, many small packed (or, for T5, padded) passes: the same joint and task gradients."""
    def gradients(**train):
        loop = Loop(build_method("full_ft"), context(synthetic_dataset, tmp_path, fmt, source, batch_size=8, **train))
        loop.model.eval()
        batches = loop.micro_batches(0)
        n_rec = sum(int((b["label_task"] == 0).sum()) for b in batches)
        n_search = sum(int((b["label_task"] == 1).sum()) for b in batches)
        tg = loop.task_backward(batches, n_rec, n_search)
        return len(batches), [p.grad.clone() for p in loop.params], tg.rec, tg.search

    n_one, joint, rec, search = gradients(pack_length=0, batch_tokens=100_000)
    n_many, joint2, rec2, search2 = gradients(pack_length=64, batch_tokens=128)
    assert n_one == 1 and n_many > 2
    for want, got in ((joint, joint2), (rec, rec2), (search, search2)):
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method,source", [("full_ft", "tiny_llama"), ("full_ft", "tiny_t5"), ("lora", "tiny_llama"),
                                           ("lora", "tiny_t5"), ("moe_lora", "tiny_llama"),
                                           ("hydra_lora", "tiny_llama")])
def test_prompt_task_gradients_from_one_backward_pass_equal_one_pass_per_task(method, source, synthetic_dataset,
                                                                             tmp_path, monkeypatch):
    """Prompt format, two accumulated micro-batches: the row split (one backward pass per micro-batch) gives the
    task and joint gradients of one forward and backward pass per task subset; so does a step whose only
    micro-batch lacks the search task. Adapters of unknown structure (MoE-LoRA, HydraLoRA) fall back to a
    restricted extra pass, with the same result."""
    loop = Loop(build_method(method), context(synthetic_dataset, tmp_path, "prompt", source, grad_accum=2,
                                              batch_tokens=64))
    loop.model.eval()  # dropout off (T5 has it) so the passes are comparable
    batches = loop.micro_batches(0)
    rec_only = [b for b in (subset_batch(b, 0) for b in batches) if b is not None][:1]
    for step_batches in (batches, rec_only):
        counts = [count_labels(b) for b in step_batches]
        n_rec, n_search = sum(c[0] for c in counts), sum(c[1] for c in counts)
        got = {}
        for split_rows in (True, False):
            monkeypatch.setattr(loop, "split_rows", split_rows)
            tg = loop.task_backward(step_batches, n_rec, n_search)
            got[split_rows] = tg, [p.grad for p in loop.params]
            loop.optimizer.zero_grad(set_to_none=True)
        (tg, joint), (ref, ref_joint) = got[True], got[False]
        assert (tg.n_rec, tg.n_search) == (ref.n_rec, ref.n_search) and tg.loss_rec == pytest.approx(ref.loss_rec)
        for want, have in ((ref.rec, tg.rec), (ref.search, tg.search), (ref_joint, joint)):
            for w, g in zip(want, have):
                assert (w is None) == (g is None)
                if w is not None:
                    torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert n_search == 0 and tg.search == [None] * len(loop.params)
    if method in ("full_ft", "lora") and source == "tiny_llama":  # every trainable weight is split by rows
        assert loop._task_split.fallback_parameters == []


def final_state(loop):
    return {n: p.detach().clone() for n, p in loop.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full_ft", "lora"])
def test_interrupted_and_resumed_run_ends_with_identical_weights(method, synthetic_dataset, tmp_path):
    full = Loop(build_method(method), context(synthetic_dataset, tmp_path / "a", checkpoint_every=3))
    full.run()
    want = final_state(full)

    interrupted_after_step_3(build_method(method), context(synthetic_dataset, tmp_path / "b", checkpoint_every=3))
    resumed = Loop(build_method(method), context(synthetic_dataset, tmp_path / "b", checkpoint_every=3))
    summary = resumed.run()
    assert summary["resumed"] and summary["steps"] == 6
    got = final_state(resumed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    log = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(6))


def test_same_seed_same_weights(synthetic_dataset, tmp_path):
    start = final_state(Loop(build_method("lora"), context(synthetic_dataset, tmp_path / "untrained")))
    a = Loop(build_method("lora"), context(synthetic_dataset, tmp_path / "a"))
    a.run()
    b = Loop(build_method("lora"), context(synthetic_dataset, tmp_path / "b"))
    b.run()
    sa, sb = final_state(a), final_state(b)
    assert sa and sa.keys() == sb.keys() == start.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], start[k]) for k in sa)  # the runs trained: the weights moved


def test_best_checkpoint_reloads_into_a_fresh_model(synthetic_dataset, tmp_path):
    ctx = context(synthetic_dataset, tmp_path)
    method = build_method("lora")
    method.fit(ctx)
    scorer = method.load_scorer(ctx)
    scores = scorer.score(synthetic_dataset.splits["test"].iloc[:3])
    assert scores.shape == (3, synthetic_dataset.n_items) and torch.isfinite(scores).all()


@pytest.mark.parametrize("hparams", [{}, {"use_dora": True}, {"init": "pissa"}], ids=["lora", "dora", "pissa"])
def test_merged_lora_scores_as_the_unmerged_model(hparams, synthetic_dataset, tmp_path):
    """Evaluation and retention merge LoRA adapters (prepare_inference); the merged model ranks as the trained,
    unmerged one does."""
    from gemsbench.train import LLMScorer, TrainSettings, build

    ctx = context(synthetic_dataset, tmp_path)
    method = build_method("lora", {"lr": 1e-2, **hparams})
    method.fit(ctx)
    merged = method.load_scorer(ctx)
    lora_layers = [m for m in merged.b.model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]
    assert lora_layers and all(m.merged for m in lora_layers)
    settings = TrainSettings.from_dict(ctx.train)
    plain = build(method, ctx, settings)
    load_trainable_state(plain.model, torch.load(tmp_path / "checkpoint" / "best.pt", weights_only=True))
    b_weights = [p for n, p in plain.model.named_parameters() if "lora_B" in n]
    assert b_weights and any(bool(p.abs().sum() > 0) for p in b_weights)  # the adapters learned something
    unmerged = LLMScorer(plain, method, "cpu", 256)
    examples = synthetic_dataset.splits["test"].iloc[:6]
    torch.testing.assert_close(merged.score(examples), unmerged.score(examples), atol=1e-4, rtol=1e-4)


def interrupted_after_step_3(method, ctx):
    """Run until the checkpoint of step 3 exists, then interrupt (as a killed job would)."""
    real_step = method.optimizer_step
    calls = []

    def step(optimizer, task_grads):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(optimizer, task_grads)

    method.optimizer_step = step
    with pytest.raises(KeyboardInterrupt):
        Loop(method, ctx).run()


def test_a_finished_run_keeps_its_best_weights_but_not_the_resume_state(synthetic_dataset, tmp_path):
    Loop(build_method("lora"), context(synthetic_dataset, tmp_path)).run()
    assert (tmp_path / "checkpoint" / "best.pt").exists()
    assert not (tmp_path / "checkpoint" / "last.pt").exists()


@pytest.mark.parametrize("method", ["full_ft", "lora", "moe_lora"])
def test_conflict_steps_log_whole_model_and_per_layer_cosines(method, synthetic_dataset, tmp_path):
    """On every conflict_every-th step the log holds the whole-model cosine and one cosine per targeted layer,
    named as in the plain backbone, and the per-layer values recombine into the whole-model one."""
    from gems import find_target_modules
    from gemsbench.train import layer_cosines, targeted_layer, task_cosine

    loop = Loop(build_method(method), context(synthetic_dataset, tmp_path, conflict_every=2, max_steps=4))
    plain = set(find_target_modules(Loop(build_method("full_ft"), context(synthetic_dataset, tmp_path / "p"))
                                    .model))
    layers = {targeted_layer(n) for n, p in loop.model.named_parameters() if p.requires_grad} - {None}
    assert layers == plain
    summary = loop.run()
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    logged = [e for e in log if "cos_rec_search" in e]
    # the method's step time leaves out the measurement: second backward passes it would not make, cosine time
    assert [e["measurement_pass"] for e in log] == [e["step"] % 2 == 0 for e in log]
    timed = [e["seconds"] - e["log_seconds"] for e in log if not e["measurement_pass"]]
    assert summary["seconds_per_step"] == pytest.approx(sum(timed) / len(timed))
    assert summary["seconds_per_step_all"] == pytest.approx(sum(e["seconds"] for e in log) / len(log))
    assert [e["step"] for e in logged] == [s for s in (0, 2) if log[s]["n_rec"] and log[s]["n_search"]]
    assert logged and all(set(e["cos_layers"]) == plain for e in logged)
    assert all(-1 <= c <= 1 for e in logged for c in e["cos_layers"].values())

    # hand check of the arithmetic on two layers of made-up gradients
    from gemsbench.methods.base import TaskGradients
    r = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])]
    s = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0])]
    tg = TaskGradients([None] * 3, r, s, 1, 1, 0.0, 0.0)
    cos = layer_cosines(tg, ["a", "a", None])
    assert cos == {"a": pytest.approx(-2 / (5 ** 0.5 * 2 ** 0.5))}
    assert task_cosine(tg) == pytest.approx(0.0)


def test_fused_adamw_of_the_baselines_takes_the_per_tensor_step():
    from baselines.finetune import ADAMW_DEFAULTS, adamw

    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(20, 12, generator=gen)) for _ in range(3)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    fused = adamw(ps, {**ADAMW_DEFAULTS, "lr": 1e-2})
    assert fused.defaults["fused"]
    loop = torch.optim.AdamW(qs, lr=1e-2, betas=tuple(ADAMW_DEFAULTS["betas"]), eps=ADAMW_DEFAULTS["eps"],
                             weight_decay=ADAMW_DEFAULTS["weight_decay"], foreach=False)
    for _ in range(10):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["full_ft", "lora", "moe_lora", "gems_no_nsp"])
def test_item_lr_scale_multiplies_the_item_rows_update_only(method, synthetic_dataset, tmp_path):
    """One step from the same state: the item rows move ``scale`` times as far, every other weight alike."""
    def one_step(scale):
        loop = Loop(build_method(method), context(synthetic_dataset, tmp_path / str(scale), max_steps=1,
                                                  item_lr_scale=scale, conflict_every=0))
        rows = loop.method.item_rows(loop.model, loop.b.encoder.items)
        assert rows, "the method must say where its item rows are"
        start = final_state(loop)
        loop.model.eval()
        batches = loop.micro_batches(0)
        n_rec = sum(int((b["label_task"] == 0).sum()) for b in batches)
        n_search = sum(int((b["label_task"] == 1).sum()) for b in batches)
        tg = loop.task_backward(batches, n_rec, n_search) if loop.method.uses_task_gradients else None
        if tg is None:
            loop.joint_backward(batches, n_rec, n_search)
        before = loop.item_rows_before_step() if loop.item_rows else None
        loop.method.optimizer_step(loop.optimizer, tg)
        if before:
            loop.scale_item_updates(before)
        names = {id(p): n for n, p in loop.model.named_parameters()}
        return start, final_state(loop), [(names[id(p)], r) for p, r in rows]

    start, plain, rows = one_step(1.0)
    _, scaled, _ = one_step(3.0)
    item_names = {n for n, _ in rows}
    for name, r in rows:
        sel = slice(None) if r is None else r
        delta, delta3 = plain[name][sel] - start[name][sel], scaled[name][sel] - start[name][sel]
        assert delta.abs().max() > 0
        torch.testing.assert_close(delta3, 3 * delta, rtol=1e-4, atol=1e-7)
        if r is not None:  # the other rows of the same matrix move as without the scale
            others = torch.ones(len(plain[name]), dtype=torch.bool)
            others[r] = False
            torch.testing.assert_close(scaled[name][others], plain[name][others])
    for name in plain:
        if name not in item_names:
            torch.testing.assert_close(scaled[name], plain[name])


_RESIDENT_AFTER_FREE = """
import ctypes, sys, torch
from gemsbench.train import keep_freed_host_memory
assert keep_freed_host_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
base = resident()
xs = [torch.ones(2 ** 26) for _ in range(5)]  # 5 x 256 MiB on the heap, every page touched
del xs
if sys.argv[1] == "handed back":  # the control: what a process that returns its freed memory reads
    ctypes.CDLL("libc.so.6").malloc_trim(0)
print((resident() - base) / 2 ** 20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or platform.libc_ver()[0] != "glibc",
                    reason="glibc on Linux only")
def test_freed_host_memory_stays_resident_for_the_next_step():
    """A step's freed tensors stay in the process for the next one (no page faults to get them back), also when
    they exceed 1 GiB together (the former 1 GiB trim threshold handed such a heap top back). The control hands
    the same freed memory back explicitly (malloc_trim), so the probe is shown to see the difference; the former
    setting itself is not the control because whether glibc trims under it depends on where the heap lies
    (it kept all 1.25 GiB in about one process in six)."""
    def kept(mode):
        done = subprocess.run([sys.executable, "-c", _RESIDENT_AFTER_FREE, mode], capture_output=True, text=True,
                              check=True)
        return float(done.stdout.split()[-1])

    assert kept("keep") > 1200  # MiB still resident after the free
    assert kept("handed back") < 300
