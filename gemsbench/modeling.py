"""Forward passes over format batches: hidden states at labelled positions -> item logits and losses.

Only the labelled positions go through the output head, so a timeline batch with hundreds of tokens pays
the vocabulary projection for its ~20 targets per row, not for every token; and they go through it in slices
of bounded size (:func:`head_map`), so a large vocabulary never holds the logits of every labelled position at
once.

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
import torch.utils.checkpoint
from torch import nn


PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX). Without it PyTorch emulates
    bf16 products, and bf16 autocast runs many times slower than float32, so ``auto`` precision keeps such CPUs
    in float32."""
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


def decoder_body(model: nn.Module) -> nn.Module:
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder body (get_decoder)")
    return body


def sequence_hidden(model: nn.Module, batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    """Last hidden states [B, T, d] of the (decoder) sequence, scaled as the model's head expects, without the
    head itself: callers put only the positions they need through it (:func:`head_map`).

    Encoder-decoders run their encoder and decoder stacks (the model's own forward would project every decoder
    position onto the whole vocabulary); ``decoder_attention_mask`` is optional. Decoder-only batches hold either
    ``position_ids`` (packed rows: restarting positions make attention block-diagonal) or ``attention_mask``."""
    if is_encoder_decoder:
        encoded = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      return_dict=True).last_hidden_state
        hidden = model.get_decoder()(input_ids=batch["decoder_input_ids"],
                                     attention_mask=batch.get("decoder_attention_mask"),
                                     encoder_hidden_states=encoded, encoder_attention_mask=batch["attention_mask"],
                                     use_cache=False, return_dict=True).last_hidden_state
        cfg = model.config
        if getattr(cfg, "model_type", "") == "t5" and getattr(cfg, "scale_decoder_outputs",
                                                               cfg.tie_word_embeddings):
            hidden = hidden * (cfg.d_model ** -0.5)  # T5 scales tied decoder outputs before its head
        return hidden
    if "position_ids" in batch:
        return decoder_body(model)(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                    use_cache=False).last_hidden_state
    return decoder_body(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                use_cache=False).last_hidden_state


def labelled_hidden(model: nn.Module, batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    """Hidden states [N, d] at the labelled positions, scaled as the model's head expects."""
    pos = batch["label_pos"]
    return sequence_hidden(model, batch, is_encoder_decoder)[pos[:, 0], pos[:, 1]]


def vocab_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits over the whole vocabulary. Through the head module (not its .weight): adapters such as
    peft's trainable tokens live in its forward()."""
    return model.get_output_embeddings()(hidden).float()


#: most logits one output-head call computes: 2^26 float32 logits are 256 MiB, whatever the vocabulary. SmolLM2's
#: ~51k rows (with item tokens) fit ~1,300 positions in one call; Gemma-3's 262k rows 256 positions.
HEAD_LOGITS = 2 ** 26


def head_slice_rows(model: nn.Module) -> int:
    """Positions per output-head call: as many as :data:`HEAD_LOGITS` allows for this vocabulary."""
    return max(1, HEAD_LOGITS // model.get_output_embeddings().weight.shape[0])


def head_map(model: nn.Module, hidden: torch.Tensor, fn, *per_row: torch.Tensor) -> torch.Tensor:
    """``fn(logits, *rows)`` over slices of ``hidden`` [N, d], concatenated along the first dimension: the
    whole-vocabulary logits of at most :func:`head_slice_rows` positions exist at once (``per_row`` tensors,
    first dimension N, are sliced alongside). ``fn`` reduces a slice's float32 logits [n, V] to what the
    caller needs (a loss per position, item scores, a log-probability).

    With gradients on, each slice runs under activation checkpointing: its logits are freed once ``fn`` has
    reduced them and computed again in the backward pass, so the memory of a full-vocabulary loss stays one
    slice's however many positions are labelled (a 262k vocabulary would otherwise hold 1 MiB of logits, and as
    much again of their gradient, per labelled position). When the head's weight is trained, autograd holds the
    slices' weight gradients side by side before adding them up, one weight-sized tensor more than a single
    call needs; slicing pays only beyond that, so a head with ``d`` inputs is called once for up to
    ``rows + d`` positions (measured: benchmarks/bench_head_memory.py). Positions that fit are one plain call."""
    rows = head_slice_rows(model)
    n = hidden.shape[0]
    weight = model.get_output_embeddings().weight
    trained = torch.is_grad_enabled() and weight.requires_grad
    if n <= rows + (weight.shape[1] if trained else 0):
        return fn(vocab_logits(model, hidden), *per_row)

    def piece(h: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return fn(vocab_logits(model, h), *args)

    checkpointed = torch.is_grad_enabled()
    outs = []
    for start in range(0, n, rows):
        args = [hidden[start:start + rows], *(t[start:start + rows] for t in per_row)]
        outs.append(torch.utils.checkpoint.checkpoint(piece, *args, use_reentrant=False) if checkpointed
                    else piece(*args))
    return torch.cat(outs)


def item_logits(model: nn.Module, hidden: torch.Tensor, item_token_ids: torch.Tensor) -> torch.Tensor:
    """Item-token logits [N, n_items] of hidden states [N, d]."""
    return head_map(model, hidden, lambda logits: logits[:, item_token_ids])


def task_loss_sums(model: nn.Module, batch: dict, item_token_ids: torch.Tensor, is_encoder_decoder: bool,
                   loss_vocab: str, head_per_task: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the labelled positions of each task: (rec_sum, search_sum).

    ``loss_vocab`` ``full`` normalises over the whole vocabulary (generation as in the release); ``items``
    over the item tokens only (cheaper, and what ranking uses). Either way only the labelled positions go
    through the head, in slices (:func:`head_map`).

    ``head_per_task``: one head call per task on that task's positions, so that a backward pass of one task's
    loss runs the head's gradient products over its own positions only (the ``timeline`` format's one backward
    pass per task; one call over all positions would push zero gradients through the other task's rows). The
    losses are the same; a backward pass of their sum costs the same products in two calls.
    """
    hidden = labelled_hidden(model, batch, is_encoder_decoder)
    if not head_per_task:
        return _loss_sums(model, hidden, batch, item_token_ids, loss_vocab)
    is_search = batch["label_task"] == 1
    return (_token_losses(model, hidden[~is_search], batch["label_item"][~is_search], item_token_ids,
                          loss_vocab).sum(),
            _token_losses(model, hidden[is_search], batch["label_item"][is_search], item_token_ids,
                          loss_vocab).sum())


def _token_losses(model: nn.Module, hidden: torch.Tensor, label_item: torch.Tensor, item_token_ids: torch.Tensor,
                  loss_vocab: str) -> torch.Tensor:
    """Cross-entropy [N] of hidden states [N, d] whose targets are the items ``label_item`` [N]."""
    if loss_vocab == "full":
        return head_map(model, hidden, lambda logits, target: F.cross_entropy(logits, target, reduction="none"),
                        item_token_ids[label_item])
    if loss_vocab == "items":
        return head_map(model, hidden, lambda logits, target: F.cross_entropy(logits[:, item_token_ids], target,
                                                                              reduction="none"), label_item)
    raise ValueError(f"unknown loss_vocab {loss_vocab!r}; use full or items")


def _loss_sums(model: nn.Module, hidden: torch.Tensor, batch: dict, item_token_ids: torch.Tensor,
               loss_vocab: str) -> tuple[torch.Tensor, torch.Tensor]:
    ce = _token_losses(model, hidden, batch["label_item"], item_token_ids, loss_vocab)
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
    body = decoder_body(model)
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
