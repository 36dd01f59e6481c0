"""Plumbing shared by the hand-written adapter baselines (MoE-LoRA, HydraLoRA).

* :class:`ItemRows` / :func:`train_item_rows` — only the item tokens' rows of the input embedding (and of the
  output head when it is untied) are trainable. They are a parametrization: the frozen matrix with its item
  rows replaced by a trainable copy, so ``module.weight`` keeps returning the current full matrix (the
  harness reads ``get_output_embeddings().weight[item_ids]`` for scoring), the trainable-parameter count is
  honest (item rows only) and checkpoints hold the rows only. Every module that shares a matrix (tied head,
  T5's encoder/decoder embeddings) gets the same parametrization, so ties survive.
* :class:`AdaptedLinear` — the base of an adapter around a frozen ``nn.Linear``.
* :func:`replace_linears` — swaps the targeted ``nn.Linear`` layers (matched on the last component of the
  dotted name) for adapter-wrapped ones and fails loudly when nothing matches.
* :class:`AdapterMethod` — freeze the backbone, train the item rows, wrap the projections, AdamW.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from gemsbench.methods.base import LLMMethod

from .finetune import adamw, linear_targets


class ItemRows(nn.Module):
    """Parametrization of a [vocab, d] matrix whose item-token rows are a trainable copy."""

    def __init__(self, weight: torch.Tensor, item_token_ids: list[int]):
        super().__init__()
        self.register_buffer("ids", torch.tensor(item_token_ids, dtype=torch.long, device=weight.device))
        self.rows = nn.Parameter(weight.detach()[self.ids].clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_copy(0, self.ids, self.rows)


def train_item_rows(model: nn.Module, item_token_ids: list[int]) -> list[nn.Parameter]:
    """Make only the item-token rows of the input embedding and output head trainable; return those params.

    Call it on a model whose parameters are already frozen.
    """
    if not item_token_ids:
        raise ValueError("no item token ids: add the item tokens to the backbone before preparing the model")
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    rows = []
    for weight in matrices:
        param = ItemRows(weight, item_token_ids)
        sharers = [m for m in model.modules() if getattr(m, "weight", None) is weight]
        for module in sharers:
            parametrize.register_parametrization(module, "weight", param)
        rows.append(param.rows)
    return rows


class AdaptedLinear(nn.Module):
    """Base of an adapter around a frozen ``nn.Linear`` (``self.base``). It exposes the base's ``weight`` and
    ``bias`` because model code reads them (T5 checks ``wo.weight.dtype``)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


def replace_linears(model: nn.Module, targets: list[str], wrap: Callable[[nn.Linear], nn.Module]) -> list[str]:
    """Replace every ``nn.Linear`` whose last name component is in ``targets`` by ``wrap(linear)``."""
    hits = [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not hits:
        raise ValueError(f"no linear layer named one of {targets} in {type(model).__name__}")
    for name, linear in hits:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrap(linear))
    return [name for name, _ in hits]


class AdapterMethod(LLMMethod):
    """Frozen backbone + trainable item rows + an adapter around every targeted projection, trained with AdamW.

    Subclasses say how to wrap one linear layer (``wrap``) and set ``defaults`` (which must hold the AdamW keys
    of :data:`baselines.finetune.ADAMW_DEFAULTS`).
    """

    @abstractmethod
    def wrap(self, linear: nn.Linear) -> nn.Module:
        """The adapter-wrapped replacement of one targeted linear layer."""

    def prepare_model(self, model: nn.Module, item_token_ids: list[int]) -> nn.Module:
        model.requires_grad_(False)
        train_item_rows(model, item_token_ids)
        replace_linears(model, linear_targets(model), self.wrap)
        return model

    def build_optimizer(self, model: nn.Module, total_steps: int) -> torch.optim.Optimizer:
        return adamw([p for p in model.parameters() if p.requires_grad], self.hparams)

    def item_rows(self, model: nn.Module, item_token_ids: list[int]) -> list[tuple[nn.Parameter, None]]:
        """The trainable copies of the item rows (:class:`ItemRows`), one per distinct matrix."""
        return [(m.rows, None) for m in model.modules() if isinstance(m, ItemRows)]
