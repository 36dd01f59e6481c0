"""The plain LLM baselines: full fine-tuning (AdamW) and LoRA (also DoRA, PiSSA) through peft.

peft is imported by the LoRA methods when they build or inspect a model, not with this module: every job of
the DAG registers every method, and the runs that use no adapter (full fine-tuning, GEMS, GaLore and their
evaluation and retention jobs) need not pay peft's import."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gemsbench.methods.base import LLMMethod, register_method
from gemsbench.methods.hparams import ADAMW_TYPES, DROPOUT, boolean, choice, integer, number

if TYPE_CHECKING:
    from peft import LoraConfig

DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
T5_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


def linear_targets(model: nn.Module) -> list[str]:
    """Last-component names of the attention and MLP projections present in ``model`` (Llama-family or T5)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wanted = T5_TARGETS if getattr(model.config, "is_encoder_decoder", False) else DECODER_TARGETS
    found = [t for t in wanted if t in names]
    if not found:
        raise ValueError(f"none of the projection names {wanted} found in {type(model).__name__}; "
                         f"linear layers seen: {sorted(names)[:10]}")
    return found


def adamw(params, hp: dict) -> torch.optim.AdamW:
    """AdamW with the hyper-parameters ``hp``, in torch's fused implementation where the parameters allow it
    (floating point, on CPU or CUDA): the same update as the per-tensor loop, at a fraction of its cost (one
    kernel over all weights instead of several passes per tensor)."""
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"],
                             weight_decay=hp["weight_decay"], fused=fused or None)


ADAMW_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-6}
#: LoRA's own hyper-parameters
LORA_TYPES = {"rank": integer(1), "alpha": number(0, low_open=True), "dropout": DROPOUT, "use_dora": boolean(),
              "init": choice("default", "pissa", "gaussian")}


@register_method("full_ft")
class FullFineTune(LLMMethod):
    """Every weight trainable, AdamW (betas, eps and weight decay as in the release)."""

    defaults = dict(ADAMW_DEFAULTS)
    hparam_types = dict(ADAMW_TYPES)

    def prepare_model(self, model, item_token_ids):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def build_optimizer(self, model, total_steps):
        return adamw([p for p in model.parameters() if p.requires_grad], self.hparams)


@register_method("lora")
class LoRA(LLMMethod):
    """LoRA (peft) on the attention and MLP projections; the item tokens' embedding rows are trainable through
    peft's ``trainable_token_indices`` (tied heads share them). ``use_dora`` and ``init`` ("pissa") give the
    DoRA and PiSSA variants.

    ``dropout`` 0 (peft's default): a dropout on every adapter input draws a random mask over each layer's
    activations, which on a CPU cost as much as the layer's own matrix product and made a LoRA step slower than
    a full fine-tuning one; over a budget of a fraction of an epoch the adapters do not overfit. Set it for
    longer runs."""

    defaults = {**ADAMW_DEFAULTS, "lr": 5e-4, "rank": 16, "alpha": 32, "dropout": 0.0, "use_dora": False,
                "init": "default"}
    hparam_types = {**ADAMW_TYPES, **LORA_TYPES}

    def lora_config(self, model, item_token_ids) -> LoraConfig:
        from peft import LoraConfig

        init = {"default": True, "pissa": "pissa", "gaussian": "gaussian"}[self.hparams["init"]]
        return LoraConfig(r=self.hparams["rank"], lora_alpha=self.hparams["alpha"],
                          lora_dropout=self.hparams["dropout"], target_modules=linear_targets(model),
                          use_dora=self.hparams["use_dora"], init_lora_weights=init,
                          trainable_token_indices=list(item_token_ids))

    def prepare_model(self, model, item_token_ids):
        from peft import get_peft_model

        return get_peft_model(model, self.lora_config(model, item_token_ids))

    def item_rows(self, model, item_token_ids):
        """peft's trainable item-token rows (one delta tensor shared by the embedding and a tied head)."""
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

        seen: dict[int, nn.Parameter] = {}
        for m in model.modules():
            if isinstance(m, TrainableTokensLayer):
                for p in m.trainable_tokens_delta.values():
                    if p.requires_grad:
                        seen.setdefault(id(p), p)
        return [(p, None) for p in seen.values()]

    def prepare_inference(self, model):
        """Merge the adapters (and item-token rows) into the weights: the same function, without the
        adapters' extra products in every forward pass (DoRA's weight norms included), which made scoring
        and retention probes of LoRA runs markedly slower than a plain model's."""
        model.merge_adapter()

    def build_optimizer(self, model, total_steps):
        return adamw([p for p in model.parameters() if p.requires_grad], self.hparams)
