"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020) over search and recommendation.

Each step the loop supplies both task gradients. When they conflict — a negative dot product, taken over all
trainable parameters together as in the paper — each is projected onto the normal plane of the other
(using the other's original gradient), then the two are combined::

    g_rec'    = g_rec    - (g_rec·g_search) / |g_search|² · g_search
    g_search' = g_search - (g_search·g_rec) / |g_rec|²    · g_rec
    g         = w_rec · g_rec' + w_search · g_search'

With two tasks the projection order does not matter. The combined gradient never points against either task:
g_rec·g_search' = 0 and g_rec·g_rec' ≥ 0 (Cauchy–Schwarz), for any non-negative weights.

Weights (``task_weighting``): ``tokens`` (default) weights each task by its share of the step's targets, as the
joint token-mean loss does, so a step without conflict is exactly the joint fine-tuning step and PCGrad differs
from its base method only by the surgery; ``equal`` takes the plain mean of the two projected gradients (the
paper's sum halved; under Adam an overall factor hardly matters, so this is the paper's combination). A step
in which one task has no target keeps the joint gradient (there is nothing to project against).
"""
from __future__ import annotations

import torch

from gemsbench.methods.base import TaskGradients, register_method
from gemsbench.methods.hparams import choice

from .finetune import FullFineTune, LoRA

WEIGHTINGS = ("tokens", "equal")


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))


def pcgrad_combine(g_rec: list[torch.Tensor], g_search: list[torch.Tensor], w_rec: float, w_search: float
                   ) -> tuple[list[torch.Tensor], bool]:
    """PCGrad of two per-parameter gradient lists; returns the combined gradients and whether they conflicted."""
    dot = _dot(g_rec, g_search)
    rec_sq, search_sq = _dot(g_rec, g_rec), _dot(g_search, g_search)
    conflict = dot < 0  # implies both norms are positive
    c_rec = w_rec - (w_search * dot / rec_sq if conflict else 0.0)  # coefficient of g_rec in the result
    c_search = w_search - (w_rec * dot / search_sq if conflict else 0.0)
    return [c_rec * r + c_search * s for r, s in zip(g_rec, g_search)], conflict


class PCGradStep:
    """Mixin for an LLM method: replaces the joint gradient by the PCGrad combination before the step."""

    uses_task_gradients = True

    def optimizer_step(self, optimizer: torch.optim.Optimizer, task_grads: TaskGradients | None) -> dict:
        if task_grads is None or not (task_grads.n_rec and task_grads.n_search):
            optimizer.step()
            return {}
        n = task_grads.n_rec + task_grads.n_search
        w_rec, w_search = ((task_grads.n_rec / n, task_grads.n_search / n)
                           if self.hparams["task_weighting"] == "tokens" else (0.5, 0.5))
        rec = [torch.zeros_like(p) if g is None else g for p, g in zip(task_grads.params, task_grads.rec)]
        search = [torch.zeros_like(p) if g is None else g for p, g in zip(task_grads.params, task_grads.search)]
        combined, conflict = pcgrad_combine(rec, search, w_rec, w_search)
        for p, g in zip(task_grads.params, combined):
            p.grad = g.to(p.dtype)
        optimizer.step()
        return {"pcgrad_conflict": int(conflict)}


@register_method("pcgrad_full")
class PCGradFullFineTune(PCGradStep, FullFineTune):
    """PCGrad on full fine-tuning (every weight trainable, AdamW with the ``full_ft`` defaults)."""

    defaults = {**FullFineTune.defaults, "task_weighting": "tokens"}
    hparam_types = {**FullFineTune.hparam_types, "task_weighting": choice(*WEIGHTINGS)}


@register_method("pcgrad_lora")
class PCGradLoRA(PCGradStep, LoRA):
    """PCGrad on peft LoRA (the ``lora`` baseline's adapters, item-token rows and defaults)."""

    defaults = {**LoRA.defaults, "task_weighting": "tokens"}
    hparam_types = {**LoRA.hparam_types, "task_weighting": choice(*WEIGHTINGS)}

