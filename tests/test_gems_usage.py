"""gems as a library: the package docstring's loop runs as written, and TaskSplit's one backward pass gives the
task gradients that one backward pass per task gives (Llama with a tied head, T5 with its relative attention
bias, peft LoRA with trainable item tokens; gradient accumulation; a task absent from a pass)."""
import pytest
import torch
import torch.nn.functional as F
import transformers

import gems
from gems import MultiSubspaceAdamW, RowSplitError, TaskSplit, build_param_groups

VOCAB = 50


def tiny_llama(dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, tie_word_embeddings=True, pad_token_id=0)).to(dtype)


def tiny_t5(dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        decoder_start_token_id=0, pad_token_id=0)).to(dtype).eval()  # eval: dropout off, passes comparable


def row_losses(model, batch, rows) -> torch.Tensor:
    """Summed token cross-entropy of each row in ``rows``."""
    if model.config.is_encoder_decoder:
        logits = model(input_ids=batch["input_ids"][rows], labels=batch["labels"][rows]).logits
        labels = batch["labels"][rows]
    else:
        logits = model(input_ids=batch["input_ids"][rows]).logits[:, :-1]
        labels = batch["labels"][rows][:, 1:]
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").sum(1)


def make_batches(model, tasks: list[list[int]], seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for task in tasks:
        ids = torch.randint(1, VOCAB, (len(task), 7), generator=gen)
        labels = torch.randint(1, VOCAB, (len(task), 3 if model.config.is_encoder_decoder else 7), generator=gen)
        labels[:, :1] = -100
        out.append({"input_ids": ids, "labels": labels, "task": torch.tensor(task)})
    return out


def counts(batches) -> tuple[int, int]:
    n = [0, 0]
    for b in batches:
        per_row = (b["labels"] != -100).sum(1)
        for t in (0, 1):
            n[t] += int(per_row[b["task"] == t].sum())
    return n[0], n[1]


def one_pass(model, batches, split: TaskSplit):
    n_rec, n_search = counts(batches)
    for b in batches:
        rows = torch.arange(len(b["task"]))
        with split.rows(b["task"]):
            loss = row_losses(model, b, rows)
        split.backward(loss[b["task"] == 0].sum() / max(n_rec, 1), loss[b["task"] == 1].sum() / max(n_search, 1))
    one_pass.backward_passes = split.backward_passes
    rec, search = split.finish(n_rec, n_search)
    return rec, search, [p.grad.clone() for p in split.params]


def reference(model, batches, params):
    """Plain autograd: one forward and backward pass per task subset, and one over the whole batch."""
    n = counts(batches)
    out = []
    for t in (0, 1):
        model.zero_grad(set_to_none=True)
        if n[t] == 0:
            out.append(None)
            continue
        for b in batches:
            rows = torch.nonzero(b["task"] == t).flatten()
            if len(rows):
                (row_losses(model, b, rows).sum() / n[t]).backward()
        out.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
    model.zero_grad(set_to_none=True)
    for b in batches:
        (row_losses(model, b, torch.arange(len(b["task"]))).sum() / sum(n)).backward()
    out.append([p.grad.clone() for p in params])
    model.zero_grad(set_to_none=True)
    return out


def assert_same(got, want, rtol=1e-9):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-12 * rtol / 1e-9)


#: the joint gradient against a whole-batch backward pass, a different computation: HF Llama's attention
#: backward differs between batch sizes by ~1e-8 (relative 1e-5 at worst) even in float64
JOINT_RTOL = 1e-5


@pytest.mark.parametrize("make", [tiny_llama, tiny_t5], ids=["llama", "t5"])
def test_one_backward_pass_gives_the_task_gradients_of_one_pass_per_task(make):
    """Interleaved tasks (rows not grouped), two accumulated micro-batches, float64: the row split equals the
    per-task passes and its joint gradient the whole-batch gradient."""
    model = make()
    split = TaskSplit(model)
    batches = make_batches(model, [[0, 1, 1, 0, 1], [1, 0, 0]])
    want_rec, want_search, want_joint = reference(model, batches, split.params)
    rec, search, joint = one_pass(model, batches, split)
    assert_same(rec, want_rec)
    assert_same(search, want_search)
    assert_same(joint, want_joint, JOINT_RTOL)
    if model.config.is_encoder_decoder:  # the relative attention bias serves every row: its own extra pass
        assert {id(p) for p in split.fallback_parameters} == {
            id(m.relative_attention_bias.weight) for m in model.modules() if hasattr(m, "relative_attention_bias")}
        assert one_pass.backward_passes == 2 * len(batches)
    else:  # every weight split by rows: one backward pass per micro-batch
        assert split.fallback_parameters == []
        assert one_pass.backward_passes == len(batches)


def test_a_task_absent_from_a_pass_or_the_step():
    model = tiny_llama()
    split = TaskSplit(model)
    batches = make_batches(model, [[0, 0, 0], [1, 0]])  # the first pass holds rec only
    want_rec, want_search, want_joint = reference(model, batches, split.params)
    rec, search, joint = one_pass(model, batches, split)
    assert_same(rec, want_rec)
    assert_same(search, want_search)
    assert_same(joint, want_joint, JOINT_RTOL)
    only_rec = batches[:1]  # search absent from the whole step: no search gradients, joint = rec
    want_rec, _, want_joint = reference(model, only_rec, split.params)
    rec, search, joint = one_pass(model, only_rec, split)
    assert search == [None] * len(split.params)
    assert_same(rec, want_rec)
    assert_same(joint, want_rec)


def test_lora_adapters_and_trainable_item_tokens_split_by_rows():
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                              trainable_token_indices=[3, 4, 5]))
    for m in model.modules():  # LoRA B starts at zero: give it values so every adapter gradient is non-trivial
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.1)
    split = TaskSplit(model)
    assert split.fallback_parameters == []
    batches = make_batches(model, [[1, 0, 1, 0]])
    batches[0]["input_ids"][:, 2] = 4  # the trainable item token appears in every row
    want_rec, want_search, want_joint = reference(model, batches, split.params)
    rec, search, joint = one_pass(model, batches, split)
    assert_same(rec, want_rec)
    assert_same(search, want_search)
    assert all(float(g.abs().sum()) > 0 for g in rec)


def test_without_rows_backward_takes_one_pass_per_task_through_the_shared_graph():
    """Rows that mix tasks (the timeline format): both losses from one forward pass, one backward pass each."""
    model = tiny_llama()
    split = TaskSplit(model)
    b = make_batches(model, [[0, 1, 0]])[0]
    token = F.cross_entropy(model(input_ids=b["input_ids"]).logits[:, :-1].transpose(1, 2), b["labels"][:, 1:],
                            reduction="none")
    first = torch.zeros_like(token, dtype=torch.bool)
    first[:, :3] = True  # the first positions of every row count as rec, the rest as search
    split.backward(token[first].sum() / 9, token[~first].sum() / 9)
    assert split.backward_passes == 2
    rec, search = split.finish(9, 9)
    model.zero_grad()
    F.cross_entropy(model(input_ids=b["input_ids"]).logits[:, :-1].transpose(1, 2), b["labels"][:, 1:],
                    reduction="none")[first].sum().div(9).backward()
    assert_same(rec, [p.grad for p in split.params])


def test_rows_that_mix_tasks_cannot_be_split():
    model = tiny_llama()
    split = TaskSplit(model)
    with pytest.raises(RowSplitError, match="mixing tasks"):
        with split.rows(torch.tensor([0, -1, 1])):
            pass
    with pytest.raises(RowSplitError, match="cannot be matched to tasks"):
        with split.rows(torch.tensor([0, 1])):  # 2 tasks given for a batch of 3 rows
            model(input_ids=torch.ones(3, 4, dtype=torch.long))


def docstring_example() -> str:
    """The indented code block after the package docstring's ``::``, dedented."""
    lines = []
    for line in gems.__doc__.split("::\n", 1)[1].splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


def test_the_package_docstring_loop_runs(tmp_path, monkeypatch):
    """The docstring's example as written, on a tiny Llama: null projectors from cached second moments, one
    row-split backward pass per batch, a batch without search rows (gate 1 for rec)."""
    monkeypatch.chdir(tmp_path)
    model = tiny_llama(torch.float32)
    gen = torch.Generator().manual_seed(3)
    general_batches = [{"input_ids": torch.randint(1, VOCAB, (4, 8), generator=gen)} for _ in range(2)]
    loader = make_batches(model, [[0, 1, 1, 0], [0, 0]])
    logged: list[dict] = []
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    code = docstring_example()
    assert "split.backward(" in code and "split.give(" in code and "opt.step()" in code
    exec(compile(code, "gems/__init__.py docstring", "exec"),
         {"model": model, "loader": loader, "general_batches": general_batches, "log": logged.append})
    assert len(logged) == 2 and (tmp_path / "cache" / "K.safetensors").exists()
    assert 0 < logged[0]["gate_rec"] < 1 and logged[1]["gate_rec"] == 1.0
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)


def test_give_hands_the_task_gradients_and_losses_to_the_optimizer():
    model = tiny_llama(torch.float32)
    opt = MultiSubspaceAdamW(build_param_groups(model, rank=4, update_gap=5), lr=1e-3)
    split = TaskSplit(model)
    b = make_batches(model, [[0, 1]])[0]
    with split.rows(b["task"]):
        loss = row_losses(model, b, torch.arange(2))
    split.backward(loss[0] / 6, loss[1] / 6)
    seen = {}
    opt.set_task_gradients = lambda rec, search, *rest: seen.update(rec=rec, search=search, rest=rest)
    rec, search = split.give(opt, 6, 6)
    assert seen["rest"] == (6, 6, pytest.approx(float(loss[0].detach()) / 6), pytest.approx(float(loss[1].detach()) / 6))
    assert [seen["rec"][p] for p in split.params] == rec and split.loss_values == [0.0, 0.0]
