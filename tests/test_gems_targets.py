"""Target selection by the last name component on tiny Llama and T5 models built from configs."""
import pytest
import transformers
from torch import nn

from gems import DEFAULT_TARGETS, build_param_groups, find_target_modules


def tiny_llama() -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100))


def tiny_t5(feed_forward_proj: str) -> nn.Module:
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=100,
        feed_forward_proj=feed_forward_proj))


def test_llama_targets_the_seven_projections_of_every_layer():
    found = find_target_modules(tiny_llama())
    assert len(found) == 2 * 7
    assert {name.rsplit(".", 1)[-1] for name in found} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"}
    assert all(isinstance(m, nn.Linear) for m in found.values())


@pytest.mark.parametrize(("feed_forward_proj", "ffn_names", "per_block"), [
    ("relu", {"wi", "wo"}, 2), ("gated-gelu", {"wi_0", "wi_1", "wo"}, 3)])
def test_t5_targets_attention_and_ffn_weights(feed_forward_proj, ffn_names, per_block):
    found = find_target_modules(tiny_t5(feed_forward_proj))
    # encoder blocks: self-attention q,k,v,o + FFN; decoder blocks add cross-attention q,k,v,o
    assert len(found) == 2 * (4 + per_block) + 2 * (8 + per_block)
    assert {name.rsplit(".", 1)[-1] for name in found} == {"q", "k", "v", "o"} | ffn_names
    assert any(".EncDecAttention.q" in name for name in found)


def test_matching_nothing_raises_with_the_names_seen():
    with pytest.raises(ValueError, match=r"target names \['q'\].*'q_proj'"):
        find_target_modules(tiny_llama(), ["q"])


def test_build_param_groups_splits_targeted_weights_from_the_rest():
    model = tiny_llama()
    groups = build_param_groups(model, rank=8, update_gap=10)
    targeted, plain = groups
    assert targeted["targeted"] and targeted["rank"] == 8 and targeted["update_gap"] == 10
    assert len(targeted["params"]) == 14 and all(p.dim() == 2 for p in targeted["params"])
    assert not plain["targeted"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_peft_wrappers_are_looked_through():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    found = find_target_modules(model, DEFAULT_TARGETS)
    assert len(found) == 14
    q = next(m for name, m in found.items() if name.endswith("q_proj"))
    assert type(q) is nn.Linear  # the base layer, not the LoRA wrapper
    with pytest.raises(ValueError, match="all frozen"):
        build_param_groups(model)
