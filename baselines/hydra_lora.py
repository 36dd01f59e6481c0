"""HydraLoRA (Tian et al., "HydraLoRA: An Asymmetric LoRA Architecture for Efficient Fine-Tuning", NeurIPS 2024).

Asymmetric LoRA: one shared down-projection ``A`` (r×in) and H up-projection heads ``B_h`` (out×r, zero
initialised), mixed per token by a router on the layer input::

    y = W x + (alpha / r) · Σ_h π_h(x) · B_h A dropout(x),    π(x) = softmax(W_r x)

The router sees no task label: it has to discover the search / recommendation split (or any other) from the
tokens, which is what sets it apart from the task-gated MoE-LoRA baseline. Because π depends on the token, the
adapter cannot be folded into ``W``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gemsbench.methods.base import register_method
from gemsbench.methods.hparams import ADAMW_TYPES, DROPOUT, integer, number

from .adapters import AdaptedLinear, AdapterMethod, replace_linears
from .finetune import ADAMW_DEFAULTS


class HydraLoRALinear(AdaptedLinear):
    """A frozen ``nn.Linear`` plus a shared LoRA ``A``, H ``B`` heads and a token-level router."""

    def __init__(self, base: nn.Linear, heads: int = 4, rank: int = 8, alpha: float = 16.0, dropout: float = 0.05):
        super().__init__(base)
        if heads < 1 or rank < 1:
            raise ValueError(f"HydraLoRA needs heads >= 1 and rank >= 1, got {heads} and {rank}")
        self.scaling = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(heads, base.out_features, rank, **kw))
        self.router = nn.Linear(base.in_features, heads, bias=False, **kw)
        self.dropout = nn.Dropout(dropout)

    def router_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Head weights π(x), [..., heads], summing to 1 over the heads."""
        return torch.softmax(self.router(x).float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        heads, _, rank = self.lora_B.shape
        h = F.linear(self.dropout(x), self.lora_A)  # [..., r]
        z = (self.router_weights(x).to(h.dtype).unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # [..., H*r]
        b = self.lora_B.permute(1, 0, 2).reshape(self.base.out_features, heads * rank)
        return out + F.linear(z, b) * self.scaling


def inject_hydra_lora(model: nn.Module, targets: list[str], **layer_kwargs) -> list[str]:
    """Wrap every targeted linear layer of ``model`` in a :class:`HydraLoRALinear`; return their names."""
    return replace_linears(model, targets, lambda linear: HydraLoRALinear(linear, **layer_kwargs))


@register_method("hydra_lora")
class HydraLoRAMethod(AdapterMethod):
    """HydraLoRA on the attention and MLP projections of a frozen backbone; item-token rows trainable.

    Defaults: rank 8 with alpha 16 (scaling 2, the LoRA baseline's) and 4 B heads; the paper chooses the head
    count per corpus (by clustering), a handful for a few domains. Dropout (0) and lr 5e-4 as the LoRA baseline.
    """

    defaults = {**ADAMW_DEFAULTS, "lr": 5e-4, "heads": 4, "rank": 8, "alpha": 16, "dropout": 0.0}
    hparam_types = {**ADAMW_TYPES, "heads": integer(1), "rank": integer(1), "alpha": number(0, low_open=True),
                    "dropout": DROPOUT}

    def wrap(self, linear: nn.Linear) -> nn.Module:
        hp = self.hparams
        return HydraLoRALinear(linear, heads=hp["heads"], rank=hp["rank"], alpha=hp["alpha"], dropout=hp["dropout"])
