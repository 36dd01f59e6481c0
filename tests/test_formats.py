"""Prompt and timeline encodings: where targets sit, which history each task sees, task separability."""
import pytest
import torch

from gemsbench.backbone import add_item_tokens, load_backbone
from gemsbench.formats import Encoder, FormatConfig, count_labels, pack_rows, subset_batch


@pytest.fixture(scope="module")
def llama(synthetic_dataset):
    bb = load_backbone({"source": "tiny_llama"})
    add_item_tokens(bb, synthetic_dataset.items["title"].tolist())
    return bb


def test_prompt_rec_history_keeps_only_rec_events(llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name="prompt"))
    ids, _ = enc.prompt_sequence("rec", "", [3, 4, 5], ["rec", "search", "rec"])
    items_in = [i for i in ids if i in llama.item_token_ids]
    assert items_in == [llama.item_token_ids[3], llama.item_token_ids[5]]
    ids, _ = enc.prompt_sequence("search", "red blue", [3, 4, 5], ["rec", "search", "rec"])
    assert [i for i in ids if i in llama.item_token_ids] == [llama.item_token_ids[j] for j in (3, 4, 5)]
    text = llama.tokenizer.decode([i for i in ids if i not in llama.item_token_ids])
    assert "search query is: red blue" in text


def test_prompt_training_label_is_last_prompt_position(llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name="prompt"))
    units = enc.training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)
    batch = enc.collate_train(units[:5])
    lengths = batch["attention_mask"].sum(1)
    assert torch.equal(batch["label_pos"][:, 1], lengths - 1)
    assert torch.equal(batch["label_item"], torch.tensor([u.targets[0] for u in units[:5]]))


def test_timeline_labels_sit_before_each_item_token(llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name="timeline", max_history=6))
    units = enc.training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)
    batch = enc.collate_train(units[:3])
    for (b, p), item, task in zip(batch["label_pos"].tolist(), batch["label_item"].tolist(),
                                  batch["label_task"].tolist()):
        assert batch["input_ids"][b, p + 1] == llama.item_token_ids[item]  # next token is the target item
        assert batch["token_task"][b, p] == task  # the predicting position is routed as the target's task
    # every training event except the first of each user is a target exactly once
    train = synthetic_dataset.events[synthetic_dataset.events["split"] == "train"]
    expected = len(train) - train["user"].nunique()
    assert sum(enc.unit_targets(u) for u in units) == expected


def test_timeline_search_query_precedes_its_item(llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name="timeline"))
    ids, tt, labels = enc.timeline_sequence([1, 2], ["rec", "search"], ["", "big old"], n_targets=1)
    (pos, item, task), = labels
    assert item == 2 and task == 1
    assert llama.tokenizer.decode(ids[:pos + 1]).endswith("big old:")


def test_eval_batch_predicts_first_target_at_last_context_position(llama, synthetic_dataset):
    test = synthetic_dataset.splits["test"].iloc[:4]
    for name in ("prompt", "timeline"):
        enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name=name))
        batch = enc.collate_eval(test)
        lengths = batch["attention_mask"].sum(1)
        assert torch.equal(batch["label_pos"][:, 1], lengths - 1)
        # the target item never appears in its own input
        for row, targets in zip(batch["input_ids"], test["targets"]):
            assert llama.item_token_ids[targets[0]] not in row[: int(lengths.max())].tolist() or \
                targets[0] in sum(test["history"].tolist(), [])


@pytest.mark.parametrize("name", ["prompt", "timeline"])
def test_padded_eval_batches_stay_within_the_budget_and_cover_every_example_once(name, llama, synthetic_dataset):
    test = synthetic_dataset.splits["test"]
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name=name))  # pack_length 0
    seen, widths = [], []
    for positions, batch in enc.eval_batches(test, 120):
        want = enc.collate_eval(test.iloc[positions])  # the batch is exactly those rows, collated
        assert want.keys() == batch.keys() and all(torch.equal(want[k], batch[k]) for k in want)
        B, T = batch["input_ids"].shape
        assert B * T <= 120 or B == 1
        widths.append(T)
        seen += positions
    assert sorted(seen) == list(range(len(test)))
    assert widths == sorted(widths) and len(set(widths)) > 1  # shortest first: little padding


@pytest.mark.parametrize("name", ["prompt", "timeline"])
def test_packed_passes_hold_every_sequence_once_within_the_budget(name, llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name=name, max_history=6),
                  pack_length=48)
    units = enc.training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)[:40]
    seqs = [enc.train_sequence(u) for u in units]
    seen = []
    for indices, batch in enc.passes(seqs, 96):
        B, T = batch["input_ids"].shape
        assert T <= max(48, max(len(seqs[i].ids) for i in indices)) and B * T <= 96 or B == 1
        assert "attention_mask" not in batch  # packed rows are told apart by their positions alone
        labels = iter(zip(batch["label_pos"].tolist(), batch["label_item"].tolist(), batch["label_task"].tolist()))
        for i in indices:  # labels come in the order of indices, each at its sequence's offset in its row
            s = seqs[i]
            for (p, item, task) in s.labels:
                (row, col), got_item, got_task = next(labels)
                start = col - p
                assert batch["input_ids"][row, start:start + len(s.ids)].tolist() == s.ids
                assert batch["position_ids"][row, start:start + len(s.ids)].tolist() == list(range(len(s.ids)))
                assert (got_item, got_task) == (item, task)
        assert next(labels, None) is None
        assert int(batch["lengths"].sum()) == sum(len(seqs[i].ids) for i in indices)
        if name == "prompt":  # prompt rows hold one task each, so task subsets are whole rows
            assert (batch["example_task"] >= 0).all()
        seen += indices
    assert sorted(seen) == list(range(len(seqs)))


def test_pack_rows_is_first_fit_decreasing():
    assert pack_rows([(0, 5), (1, 9), (2, 3), (3, 6), (4, 10)], 12) == [[4], [1, 2], [3, 0]]
    assert pack_rows([(0, 20), (1, 2)], 12) == [[0], [1]]  # a sequence longer than a row gets its own


@pytest.mark.parametrize("name", ["prompt", "timeline"])
def test_packed_rows_compute_what_the_sequences_compute_alone(name, llama, synthetic_dataset):
    """Block-diagonal attention from restarting positions: packing changes no hidden state."""
    from gemsbench.modeling import labelled_hidden
    units = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name=name, max_history=6)) \
        .training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)[:12]
    padded = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name=name, max_history=6))
    seqs = [padded.train_sequence(u) for u in units]
    width = 2 * max(len(s.ids) for s in seqs)
    packed = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name=name, max_history=6),
                     pack_length=width)
    llama.model.eval()
    passes = packed.passes(seqs, 2 * width)
    assert sum(len(b["input_ids"]) for _, b in passes) < len(seqs)  # sequences share rows
    with torch.no_grad():
        for indices, batch in passes:
            want = labelled_hidden(llama.model, padded.collate([seqs[i] for i in indices]), False)
            torch.testing.assert_close(labelled_hidden(llama.model, batch, False), want, atol=1e-5, rtol=1e-4)


def test_subset_batch_keeps_one_task(llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name="prompt"))
    units = enc.training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)[:10]
    batch = enc.collate_train(units)
    n_rec, n_search = count_labels(batch)
    rec, search = subset_batch(batch, 0), subset_batch(batch, 1)
    assert count_labels(rec) == (n_rec, 0) and count_labels(search) == (0, n_search)
    assert len(rec["input_ids"]) + len(search["input_ids"]) == len(units)


def test_timeline_rejects_encoder_decoder(synthetic_dataset):
    bb = load_backbone({"source": "tiny_t5"})
    add_item_tokens(bb, synthetic_dataset.items["title"].tolist())
    with pytest.raises(ValueError, match="decoder-only"):
        Encoder(bb.tokenizer, bb.item_token_ids, True, FormatConfig(name="timeline"))


def test_subset_of_packed_prompt_rows_keeps_one_task(llama, synthetic_dataset):
    enc = Encoder(llama.tokenizer, llama.item_token_ids, False, FormatConfig(name="prompt"), pack_length=200)
    units = enc.training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)[:30]
    (indices, batch), = enc.passes([enc.train_sequence(u) for u in units], 10_000)
    n_rec, n_search = count_labels(batch)
    assert n_rec and n_search
    rec, search = subset_batch(batch, 0), subset_batch(batch, 1)
    assert count_labels(rec) == (n_rec, 0) and count_labels(search) == (0, n_search)
    for sub in (rec, search):  # the labels still point at the item positions they predicted before
        assert sub["input_ids"].shape == sub["position_ids"].shape
    assert len(rec["input_ids"]) + len(search["input_ids"]) == len(batch["input_ids"])
