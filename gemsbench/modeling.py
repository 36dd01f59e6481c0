"""Forward passes over format batches: hidden states at labelled positions -> item logits and losses.

Only the labelled positions go through the output head, so a timeline batch with hundreds of tokens pays
the vocabulary projection for its ~20 targets per row, not for every token.

Ranking by item-token logits at the first generated position is what a constrained beam search over the
candidate items returns when each item is one atomic token: the first decoding step scores every allowed
token by its log-probability, and log-softmax is monotone in the logit (tested in tests/test_modeling.py).
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX). Without it PyTorch emulates
    bf16 products, and bf16 autocast runs many times slower than float32 (on a 2-core AVX2 machine a SmolLM2
    forward and backward pass took 18× longer), so ``auto`` precision keeps such CPUs in float32."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        return cpuinfo_has_native_bf16(cpuinfo.read_text())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpuinfo_has_native_bf16(cpuinfo: str) -> bool:
    """Whether the first ``flags`` line of a /proc/cpuinfo text names a bf16 matrix instruction set."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: str) -> str:
    """``bf16`` or ``fp32``: ``auto`` is bf16 where the hardware multiplies bf16 natively (CUDA devices that
    support it; CPUs with AVX-512 BF16 or AMX), fp32 elsewhere. The training summary records the result."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: str, precision: str):
    """bf16 autocast where the (resolved) precision asks for it; fp32 otherwise."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _decoder_body(model: nn.Module) -> nn.Module:
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder body (get_decoder)")
    return body


def labelled_hidden(model: nn.Module, batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    """Hidden states [N, d] at the labelled positions, scaled as the model's head expects."""
    if is_encoder_decoder:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["decoder_input_ids"], output_hidden_states=True, return_dict=True)
        hidden = out.decoder_hidden_states[-1]
        cfg = model.config
        if getattr(cfg, "model_type", "") == "t5" and getattr(cfg, "scale_decoder_outputs",
                                                               cfg.tie_word_embeddings):
            hidden = hidden * (cfg.d_model ** -0.5)  # T5 scales tied decoder outputs before its head
    elif "position_ids" in batch:  # packed rows: restarting positions make attention block-diagonal
        hidden = _decoder_body(model)(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                      use_cache=False).last_hidden_state
    else:
        hidden = _decoder_body(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      use_cache=False).last_hidden_state
    pos = batch["label_pos"]
    return hidden[pos[:, 0], pos[:, 1]]


def item_logits(model: nn.Module, hidden: torch.Tensor, item_token_ids: torch.Tensor) -> torch.Tensor:
    # Through the head module (not its .weight): adapters such as peft's trainable tokens live in forward().
    return vocab_logits(model, hidden)[:, item_token_ids]


def vocab_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_output_embeddings()(hidden).float()


def task_loss_sums(model: nn.Module, batch: dict, item_token_ids: torch.Tensor, is_encoder_decoder: bool,
                   loss_vocab: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the labelled positions of each task: (rec_sum, search_sum).

    ``loss_vocab`` ``full`` normalises over the whole vocabulary (generation as in the release); ``items``
    over the item tokens only (cheaper, and what ranking uses).
    """
    hidden = labelled_hidden(model, batch, is_encoder_decoder)
    return _loss_sums(model, hidden, batch, item_token_ids, loss_vocab)


def _loss_sums(model: nn.Module, hidden: torch.Tensor, batch: dict, item_token_ids: torch.Tensor,
               loss_vocab: str) -> tuple[torch.Tensor, torch.Tensor]:
    if loss_vocab == "full":
        logits = vocab_logits(model, hidden)
        target = item_token_ids[batch["label_item"]]
    elif loss_vocab == "items":
        logits = item_logits(model, hidden, item_token_ids)
        target = batch["label_item"]
    else:
        raise ValueError(f"unknown loss_vocab {loss_vocab!r}; use full or items")
    ce = F.cross_entropy(logits, target, reduction="none")
    is_search = batch["label_task"] == 1
    return ce[~is_search].sum(), ce[is_search].sum()


@torch.no_grad()
def scores_and_loss_sums(model: nn.Module, batch: dict, item_token_ids: torch.Tensor, is_encoder_decoder: bool,
                         loss_vocab: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`score_items` and :func:`task_loss_sums` of one evaluation batch from a single forward pass
    (validation needs both; two passes doubled its cost)."""
    hidden = labelled_hidden(model, batch, is_encoder_decoder)
    rec, search = _loss_sums(model, hidden, batch, item_token_ids, loss_vocab)
    return item_logits(model, hidden, item_token_ids), rec, search


@torch.no_grad()
def score_items(model: nn.Module, batch: dict, item_token_ids: torch.Tensor, is_encoder_decoder: bool
                ) -> torch.Tensor:
    """Item-token logits [B, n_items] at the first generated position of each evaluation row."""
    hidden = labelled_hidden(model, batch, is_encoder_decoder)
    return item_logits(model, hidden, item_token_ids)


@torch.no_grad()
def packed_attention_is_exact(model: nn.Module, tol: float = 1e-4) -> bool:
    """Whether a decoder keeps sequences packed into one row apart: two short sequences packed back to back
    (positions restarting at the second) must give the hidden states they give alone. Transformers builds the
    block-diagonal causal mask from restarting ``position_ids``; a model whose attention ignores them would
    let packed sequences see each other, so the harness checks once per backbone (float32, eval mode)."""
    body = _decoder_body(model)
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(0)
        vocab = min(int(model.config.vocab_size), 1000)
        a, b = (torch.randint(0, vocab, (1, n), generator=g) for n in (5, 7))
        device = next(model.parameters()).device
        a, b = a.to(device), b.to(device)
        alone = torch.cat([body(input_ids=x, use_cache=False).last_hidden_state for x in (a, b)], dim=1)
        positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0).to(device)
        packed = body(input_ids=torch.cat([a, b], dim=1), position_ids=positions, use_cache=False).last_hidden_state
        return bool((packed.float() - alone.float()).abs().max() <= tol * max(1.0, float(alone.abs().max())))
    finally:
        model.train(was_training)
