"""MoE-LoRA with a task-conditioned gate (MOELoRA style: Liu et al., "When MOE Meets LLMs", SIGIR 2024).

Each targeted linear layer ``W`` gets E LoRA experts (``A_i``: r×in, ``B_i``: out×r, B zero-initialised) and a
gate driven by the task alone: a learned task embedding (search / recommendation) → linear → softmax over the
experts. For an input of task t::

    y = W x + (alpha / r) · Σ_i g_t,i · B_i A_i dropout(x),    g_t = softmax(W_g e_t)

The gate's linear map starts at zero, so the gates start uniform (1/E) and any difference between the tasks'
gates is learned. With uniform gates the update equals one rank E·r LoRA with scaling alpha / (E·r), i.e.
the defaults (4 experts × rank 4, alpha 32) start as the plain LoRA baseline (rank 16, alpha 32) does.

The task ids are routed to every layer with :func:`set_task_routing` before each forward pass: per token
([B, T], used wherever a layer's input is [B, T, d] with the same T) and per example ([B], used elsewhere,
e.g. in T5's decoder whose length differs from the prompt's). Because the gate depends only on the task, the
adapter can be folded into ``W`` for one task (:meth:`MoELoRALinear.merge`) and taken out again (up to
float rounding).
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


class MoELoRALinear(AdaptedLinear):
    """A frozen ``nn.Linear`` plus task-gated LoRA experts."""

    def __init__(self, base: nn.Linear, experts: int = 4, rank: int = 4, alpha: float = 32.0,
                 dropout: float = 0.05, n_tasks: int = 2, task_dim: int = 64):
        super().__init__(base)
        if experts < 1 or rank < 1:
            raise ValueError(f"MoE-LoRA needs experts >= 1 and rank >= 1, got {experts} and {rank}")
        self.scaling = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(experts, rank, base.in_features, **kw))
        for a in self.lora_A.data:  # each expert's A as a LoRA A (nn.Linear's init)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(experts, base.out_features, rank, **kw))
        self.dropout = nn.Dropout(dropout)
        self.task_embedding = nn.Embedding(n_tasks, task_dim, **kw)
        self.gate = nn.Linear(task_dim, experts, bias=False, **kw)
        nn.init.zeros_(self.gate.weight)
        self.token_tasks: torch.Tensor | None = None  # [B, T], set by set_task_routing
        self.example_tasks: torch.Tensor | None = None  # [B]
        self.merged_task: int | None = None

    def gate_weights(self) -> torch.Tensor:
        """Expert weights of every task, [n_tasks, experts] (rows sum to 1)."""
        return torch.softmax(self.gate(self.task_embedding.weight).float(), dim=-1)

    def _weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights broadcastable to ``x[..., experts]`` from the routed task ids."""
        probs = self.gate_weights()
        tok, ex = self.token_tasks, self.example_tasks
        if tok is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(tok.shape):
            return probs[tok]
        if ex is not None and x.shape[0] == ex.shape[0]:
            if bool((ex < 0).any()):
                raise ValueError("a row mixes both tasks (example task -1) but this layer's input "
                                 f"{tuple(x.shape)} does not match the per-token task ids; route per token")
            return probs[ex].view(ex.shape[0], *([1] * (x.dim() - 2)), -1)
        shapes = {k: None if v is None else tuple(v.shape) for k, v in (("token", tok), ("example", ex))}
        raise ValueError(f"MoE-LoRA layer input {tuple(x.shape)} fits none of the routed task ids {shapes}; "
                         "call set_task_routing(model, ...) with this batch before the forward pass")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged_task is not None:
            return out
        experts, rank, _ = self.lora_A.shape
        h = F.linear(self.dropout(x), self.lora_A.reshape(experts * rank, -1)).unflatten(-1, (experts, rank))
        z = (h * self._weights_for(x).unsqueeze(-1).to(h.dtype)).flatten(-2)
        b = self.lora_B.permute(1, 0, 2).reshape(self.base.out_features, experts * rank)
        return out + F.linear(z, b) * self.scaling

    @torch.no_grad()
    def delta_weight(self, task: int) -> torch.Tensor:
        """The update this layer applies to ``W`` for ``task``: scaling · Σ_i g_task,i B_i A_i."""
        g = self.gate_weights()[task].to(self.lora_A.dtype)
        return torch.einsum("e,eor,eri->oi", g, self.lora_B, self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self, task: int) -> None:
        """Fold ``task``'s gated experts into ``W``; the forward pass then ignores the routing."""
        if self.merged_task is not None:
            raise RuntimeError(f"already merged for task {self.merged_task}; unmerge first")
        self.base.weight += self.delta_weight(task)
        self.merged_task = task

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_task is None:
            raise RuntimeError("not merged")
        self.base.weight -= self.delta_weight(self.merged_task)
        self.merged_task = None


def moe_layers(model: nn.Module) -> list[MoELoRALinear]:
    return [m for m in model.modules() if isinstance(m, MoELoRALinear)]


def inject_moe_lora(model: nn.Module, targets: list[str], **layer_kwargs) -> list[str]:
    """Wrap every targeted linear layer of ``model`` in a :class:`MoELoRALinear`; return their names."""
    return replace_linears(model, targets, lambda linear: MoELoRALinear(linear, **layer_kwargs))


def set_task_routing(model: nn.Module, token_task: torch.Tensor | None = None,
                     example_task: torch.Tensor | None = None) -> None:
    """Route task ids (0 rec, 1 search) to every MoE-LoRA layer for the next forward passes.

    ``token_task`` [B, T] serves layers whose input is [B, T, d]; ``example_task`` [B] every other layer
    (broadcast over its tokens). Give at least one.
    """
    if token_task is None and example_task is None:
        raise ValueError("set_task_routing needs token_task or example_task")
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE-LoRA layer to route")
    for layer in layers:
        layer.token_tasks, layer.example_tasks = token_task, example_task


def merge_moe_lora(model: nn.Module, task: int) -> None:
    for layer in moe_layers(model):
        layer.merge(task)


def unmerge_moe_lora(model: nn.Module) -> None:
    for layer in moe_layers(model):
        layer.unmerge()


@register_method("moe_lora")
class MoELoRAMethod(AdapterMethod):
    """MoE-LoRA on the attention and MLP projections of a frozen backbone; item-token rows trainable.

    Defaults: MOELoRA splits one LoRA rank budget over its experts (our reading of its medical multi-task
    setting: total rank 16 over 8 experts, alpha 32, 64-d task embedding). With two tasks and a 135M backbone
    we take 4 experts of rank 4 (total rank 16 and alpha 32, as the plain LoRA baseline), a 64-d task
    embedding, and dropout (0) and lr 5e-4 as the LoRA baseline.
    """

    defaults = {**ADAMW_DEFAULTS, "lr": 5e-4, "experts": 4, "expert_rank": 4, "alpha": 32, "dropout": 0.0,
                "task_dim": 64}
    hparam_types = {**ADAMW_TYPES, "experts": integer(1), "expert_rank": integer(1), "alpha": number(0, low_open=True),
                    "dropout": DROPOUT, "task_dim": integer(1)}

    def wrap(self, linear: nn.Linear) -> nn.Module:
        hp = self.hparams
        return MoELoRALinear(linear, experts=hp["experts"], rank=hp["expert_rank"], alpha=hp["alpha"],
                             dropout=hp["dropout"], task_dim=hp["task_dim"])

    def before_forward(self, model: nn.Module, batch: dict) -> None:
        set_task_routing(model, token_task=batch["token_task"], example_task=batch["example_task"])
