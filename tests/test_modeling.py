"""Ranking by first-position item-token logits equals the release's constrained beam search."""
import pytest
import torch

from gemsbench.backbone import add_item_tokens, load_backbone
from gemsbench.formats import Encoder, FormatConfig
from gemsbench.modeling import score_items, scores_and_loss_sums, task_loss_sums


def beam_ranking(bb, input_ids, candidate_tokens):
    """Constrained beam search over the candidate items (one atomic token each), best first."""
    kwargs = dict(max_new_tokens=1, num_beams=len(candidate_tokens), num_return_sequences=len(candidate_tokens),
                  do_sample=False, prefix_allowed_tokens_fn=lambda b, ids: candidate_tokens,
                  pad_token_id=bb.tokenizer.pad_token_id, eos_token_id=None, early_stopping=True)
    if bb.is_encoder_decoder:
        kwargs["decoder_start_token_id"] = bb.model.config.decoder_start_token_id
    out = bb.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    return out[:, -1].tolist()


def tiny_timeline_batch(dataset, n_units: int):
    """The tiny Llama with the dataset's item tokens, and a training batch of its first ``n_units`` timeline
    windows."""
    bb = load_backbone({"source": "tiny_llama"})
    add_item_tokens(bb, dataset.items["title"].tolist())
    enc = Encoder(bb.tokenizer, bb.item_token_ids, False, FormatConfig(name="timeline"))
    units = enc.training_units(dataset.splits["train"], dataset.events)
    return bb, enc.collate_train(units[:n_units])


@pytest.mark.parametrize("source", ["tiny_llama", "tiny_t5"])
def test_first_position_ranking_equals_constrained_beam_search(source, synthetic_dataset):
    bb = load_backbone({"source": source, "seed": 3})
    add_item_tokens(bb, synthetic_dataset.items["title"].tolist(), init="random", seed=3)
    bb.model.eval()
    enc = Encoder(bb.tokenizer, bb.item_token_ids, bb.is_encoder_decoder, FormatConfig(name="prompt"),
                  bb.model.config.decoder_start_token_id if bb.is_encoder_decoder else None)
    item_ids = torch.tensor(bb.item_token_ids)
    for _, row in synthetic_dataset.splits["test"].iloc[:3].iterrows():
        batch = enc.collate_eval(row.to_frame().T)
        scores = score_items(bb.model, batch, item_ids, bb.is_encoder_decoder)[0]
        cands = list(row["candidates"])[:8]
        by_logit = [bb.item_token_ids[c] for c in sorted(cands, key=lambda c: -float(scores[c]))]
        assert beam_ranking(bb, batch["input_ids"], [bb.item_token_ids[c] for c in cands]) == by_logit


def test_item_logits_equal_full_vocabulary_logits_of_the_model(synthetic_dataset):
    bb = load_backbone({"source": "tiny_llama"})
    add_item_tokens(bb, synthetic_dataset.items["title"].tolist())
    enc = Encoder(bb.tokenizer, bb.item_token_ids, False, FormatConfig(name="prompt"))
    batch = enc.collate_eval(synthetic_dataset.splits["test"].iloc[:4])
    ids = torch.tensor(bb.item_token_ids)
    with torch.no_grad():
        scores = score_items(bb.model, batch, ids, False)
        logits = bb.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pos = batch["label_pos"]
    torch.testing.assert_close(scores, logits[pos[:, 0], pos[:, 1]][:, ids])


def test_task_losses_split_by_label_task(synthetic_dataset):
    bb, batch = tiny_timeline_batch(synthetic_dataset, 4)
    ids = torch.tensor(bb.item_token_ids)
    rec, search = task_loss_sums(bb.model, batch, ids, False, "full")
    with torch.no_grad():
        logits = bb.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pos = batch["label_pos"]
    ce = torch.nn.functional.cross_entropy(logits[pos[:, 0], pos[:, 1]], ids[batch["label_item"]], reduction="none")
    torch.testing.assert_close(rec.detach(), ce[batch["label_task"] == 0].sum())
    torch.testing.assert_close(search.detach(), ce[batch["label_task"] == 1].sum())


@pytest.mark.parametrize("loss_vocab", ["full", "items"])
def test_one_pass_scores_and_losses_equal_the_two_pass_ones(synthetic_dataset, loss_vocab):
    """Validation's single forward pass gives exactly what score_items and task_loss_sums give apart."""
    bb = load_backbone({"source": "tiny_llama"})
    add_item_tokens(bb, synthetic_dataset.items["title"].tolist())
    enc = Encoder(bb.tokenizer, bb.item_token_ids, False, FormatConfig(name="timeline"))
    batch = enc.collate_eval(synthetic_dataset.splits["valid"].iloc[:6])
    ids = torch.tensor(bb.item_token_ids)
    bb.model.eval()
    scores, rec, search = scores_and_loss_sums(bb.model, batch, ids, False, loss_vocab)
    with torch.no_grad():
        rec2, search2 = task_loss_sums(bb.model, batch, ids, False, loss_vocab)
        torch.testing.assert_close(scores, score_items(bb.model, batch, ids, False))
    torch.testing.assert_close(rec, rec2)
    torch.testing.assert_close(search, search2)
    assert bool(batch["label_task"].eq(0).any()) and bool(batch["label_task"].eq(1).any())


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch):
    from gemsbench import modeling
    assert modeling.cpuinfo_has_native_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert modeling.cpuinfo_has_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not modeling.cpuinfo_has_native_bf16("flags\t: fpu avx avx2 fma f16c\n")  # AVX2 only: emulated bf16
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: native)
        assert modeling.resolve_precision("auto", "cpu") == want
        assert modeling.resolve_precision("fp32", "cpu") == "fp32" and modeling.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        modeling.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("loss_vocab", ["full", "items"])
def test_the_head_in_slices_gives_the_losses_and_gradients_of_the_whole_head(synthetic_dataset, loss_vocab,
                                                                              monkeypatch):
    """With the head's logit budget cut to 3 positions a slice, a timeline batch's task losses and gradients equal
    those of one call over all positions, no call sees more than 3 positions, and no logits of the vocabulary are
    kept for the backward pass (each slice is checkpointed: only its inputs are saved). The batch holds more
    positions than 3 + the hidden size, beyond which slicing a trained head pays (modeling.head_map)."""
    from gemsbench import modeling

    bb, batch = tiny_timeline_batch(synthetic_dataset, 8)
    ids = torch.tensor(bb.item_token_ids)
    vocab, hidden = bb.model.get_output_embeddings().weight.shape
    assert len(batch["label_item"]) > 3 + hidden

    def losses_and_grads():
        bb.model.zero_grad()
        rec, search = task_loss_sums(bb.model, batch, ids, False, loss_vocab)
        (rec + search).backward()
        return rec.detach(), search.detach(), [p.grad.clone() for p in bb.model.parameters()]

    whole = losses_and_grads()
    monkeypatch.setattr(modeling, "HEAD_LOGITS", 3 * vocab)
    calls, saved = [], []
    head_forward = modeling.vocab_logits
    monkeypatch.setattr(modeling, "vocab_logits", lambda m, h: calls.append(len(h)) or head_forward(m, h))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        sliced = losses_and_grads()
    assert max(calls) == 3 and sum(calls) >= 2 * len(batch["label_item"])  # forward, then again in backward
    assert not [shape for shape in saved if shape and shape[-1] == vocab and len(shape) == 2 and shape[0] > 1]
    torch.testing.assert_close(sliced[0], whole[0])
    torch.testing.assert_close(sliced[1], whole[1])
    for a, b in zip(sliced[2], whole[2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss_vocab", ["full", "items"])
def test_a_head_call_per_task_gives_the_same_losses_and_task_gradients(synthetic_dataset, loss_vocab, monkeypatch):
    """``head_per_task`` (the timeline format's one backward pass per task): each head call holds one task's
    positions only, and each task's loss and gradient equal those of one head call over every position."""
    from gemsbench import modeling

    bb, batch = tiny_timeline_batch(synthetic_dataset, 4)
    ids = torch.tensor(bb.item_token_ids)
    assert bool(batch["label_task"].eq(0).any()) and bool(batch["label_task"].eq(1).any())
    params = [p for p in bb.model.parameters() if p.requires_grad]

    def task_grads(**kw):
        losses = task_loss_sums(bb.model, batch, ids, False, loss_vocab, **kw)
        grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
        return [loss.detach() for loss in losses], grads

    whole = task_grads()
    calls = []
    head_forward = modeling.vocab_logits
    monkeypatch.setattr(modeling, "vocab_logits", lambda m, h: calls.append(len(h)) or head_forward(m, h))
    split = task_grads(head_per_task=True)
    assert sorted(calls) == sorted(int(c) for c in batch["label_task"].bincount(minlength=2))
    for a, b in zip(split[0], whole[0]):
        torch.testing.assert_close(a, b)
    for task_a, task_b in zip(split[1], whole[1]):
        for a, b in zip(task_a, task_b):
            if a is None or b is None:
                assert a is None and b is None or (a if b is None else b).abs().max() == 0
            else:
                torch.testing.assert_close(a, b)
