"""A tiny GGUF file written with the ``gguf`` package, for tests: a random two-layer Llama with a byte-level BPE
tokenizer that puts a beginning-of-text token in front of every text (``tokenizer.ggml.add_bos_token``), its
matrices quantised to Q8_0 as llama.cpp's converter would store them (query and key rows permuted the way
llama.cpp expects; transformers undoes it on load). Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1 (BOS), 2 (EOS and padding)
MERGES = ["Ġ t", "h e", "Ġt he"]
HEADS, KV_HEADS, HIDDEN, LAYERS = 4, 2, 32, 2


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of a query or key projection (convert_hf_to_gguf.py's ``permute``)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_tiny_gguf(path: Path, seed: int = 0) -> LlamaForCausalLM:
    """Write the GGUF to ``path``; returns the float32 model it was made from (its weights before quantisation)."""
    tokens = SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(2 * HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: llama.cpp stores it once
            continue
        weight = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            weight = _permute(weight, HEADS)
        elif name.endswith("k_proj.weight"):
            weight = _permute(weight, KV_HEADS)
        target = names.get_name(name, try_suffixes=(".weight",))
        if weight.ndim == 2:
            writer.add_tensor(target, gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(target, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
