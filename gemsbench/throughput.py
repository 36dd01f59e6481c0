"""Model FLOPs of a training step and the machine's matrix-product rate, for model FLOP utilisation (MFU).

MFU = model FLOP/s ÷ the rate of a large dense matrix product in the run's compute dtype, measured in the same
process (same threads, same device). Model FLOPs count the work a step's passes must do, not what the
implementation happens to do:

* body: 2·N per token and forward pass, 4·N per token and backward pass (activation and weight gradients),
  with N the backbone's weights outside its embeddings and head (the usual 6·N per trained token);
* head: 2·d·V per labelled position and forward pass, 4·d·V per backward pass, with V the vocabulary the loss
  normalises over (the whole vocabulary, or the item tokens with ``loss_vocab: items``);
* attention products are left out (windows of ~60 tokens: about 2 % of the body's work);
* a method's real passes: GEMS in the timeline format takes two backward passes through one forward pass, so
  its step counts 2·N + 2 × 4·N per token; LoRA counts 6·N like full fine-tuning (its backward pass still
  runs through every frozen weight for the activation gradients, and the usual convention counts 6·N).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


def body_parameters(model: nn.Module) -> int:
    """Weights of ``model`` outside its input embeddings and output head (shared tensors counted once)."""
    skip = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        skip.add(id(head.weight))
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in skip or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@dataclass
class StepWork:
    """What one optimizer step's passes covered: tokens and labelled positions, per direction."""

    forward_tokens: int = 0
    backward_tokens: int = 0
    forward_labels: int = 0
    backward_labels: int = 0

    def add(self, other: "StepWork") -> None:
        self.forward_tokens += other.forward_tokens
        self.backward_tokens += other.backward_tokens
        self.forward_labels += other.forward_labels
        self.backward_labels += other.backward_labels

    def flops(self, body_params: int, head_width: int) -> float:
        """Model FLOPs (module docstring); ``head_width`` = hidden size × vocabulary of the loss."""
        return float(2 * body_params * self.forward_tokens + 4 * body_params * self.backward_tokens
                     + 2 * head_width * self.forward_labels + 4 * head_width * self.backward_labels)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rate(precision: str, device: str = "cpu", size: int = 2048, min_seconds: float = 0.5) -> float:
    """FLOP/s of ``size``³ matrix products in ``precision`` (bf16 or fp32) on ``device``, in this process.

    One product warms up; then products are timed until ``min_seconds`` have passed. Where a product is slow
    (bf16 emulated on a CPU without bf16 units takes minutes at 2048³) the size is lowered until one product
    takes at most ``min_seconds``: the rate then reads a little low, never a stalled run."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = size
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        first = time.perf_counter() - t0
        if first <= min_seconds or n <= 256:
            break
        n //= 2
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and reps >= 3:
            return 2.0 * n ** 3 * reps / elapsed
