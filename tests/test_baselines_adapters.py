"""Adapter plumbing: only item-token rows train (tied and untied heads), targeted-linear replacement."""
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.adapters import replace_linears, train_item_rows
from gemsbench.backbone import load_backbone

ITEMS = [90, 91, 92]


def untied_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))


def item_loss(model, is_t5):
    ids = torch.tensor([[5, 90, 7, 91]])
    kw = {"decoder_input_ids": ids} if is_t5 else {}
    return model(input_ids=ids, **kw).logits[:, -1].log_softmax(-1)[0, ITEMS].sum().neg()


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_t5", "untied"])
def test_only_item_rows_train_and_weight_reads_see_them(kind):
    model = untied_llama() if kind == "untied" else load_backbone({"source": kind}).model
    emb, head = model.get_input_embeddings().weight.detach().clone(), model.get_output_embeddings().weight
    head = head.detach().clone()
    model.requires_grad_(False)
    rows = train_item_rows(model, ITEMS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(rows) == (2 if kind == "untied" else 1)
    assert {id(p) for p in trainable} == {id(p) for p in rows}
    assert all(r.shape == (len(ITEMS), emb.shape[1]) for r in rows)
    opt = torch.optim.SGD(rows, lr=1.0)
    item_loss(model, kind == "tiny_t5").backward()
    opt.step()
    new_emb, new_head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    others = [i for i in range(emb.shape[0]) if i not in ITEMS]
    assert torch.equal(new_emb[others], emb[others]) and torch.equal(new_head[others], head[others])
    assert not torch.allclose(new_head[ITEMS], head[ITEMS])  # the harness scores with head.weight[item ids]
    if kind == "tiny_t5":  # the encoder and decoder embeddings share the same trained rows
        assert torch.equal(model.encoder.embed_tokens.weight, new_emb)
        assert torch.equal(model.decoder.embed_tokens.weight, new_emb)


def test_replace_linears_matches_last_name_component_and_fails_on_no_match():
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(4, 4))
    model.add_module("block", nn.Sequential())
    model.block.add_module("q_proj", nn.Linear(4, 4))
    model.block.add_module("k_proj_extra", nn.Linear(4, 4))
    names = replace_linears(model, ["q_proj"], lambda lin: nn.Sequential(lin))
    assert names == ["q_proj", "block.q_proj"]
    assert isinstance(model.block.q_proj, nn.Sequential) and isinstance(model.block.k_proj_extra, nn.Linear)
    with pytest.raises(ValueError, match="no linear layer"):
        replace_linears(model, ["wo"], lambda lin: lin)
