"""Which 2-D weights GEMS targets, found by the last component of each module's dotted name.

Matching whole name components (not substrings) is deliberate: the authors' release matched ``'.q.'`` and so
silently matched no T5 layer. Matching nothing raises, so a typo can never turn the method off quietly.
peft wrappers (LoRA layers and the like) are looked through via ``get_base_layer()``.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

LLAMA_LIKE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
T5_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
DEFAULT_TARGETS = LLAMA_LIKE_TARGETS + T5_TARGETS


def find_target_modules(model: nn.Module, names: Iterable[str] = DEFAULT_TARGETS) -> dict[str, nn.Module]:
    """Map dotted module name -> module owning a 2-D ``weight``, for modules whose last name component is
    in ``names`` (for a peft wrapper, the wrapped base layer)."""
    wanted = set(names)
    found: dict[str, nn.Module] = {}
    for full_name, module in model.named_modules():
        if full_name.rsplit(".", 1)[-1] not in wanted:
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        weight = getattr(base, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2:
            found[full_name] = base
    if not found:
        seen = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ValueError(f"no module of {type(model).__name__} matches the target names {sorted(wanted)}; "
                         f"last name components present include {seen[:20]}. Fix the target list.")
    return found


def build_param_groups(model: nn.Module, names: Iterable[str] = DEFAULT_TARGETS,
                       **targeted_options) -> list[dict]:
    """Param groups for :class:`gems.MultiSubspaceAdamW`: the trainable targeted weights in one group with
    ``targeted=True`` plus ``targeted_options`` (rank, update_gap, ...), every other trainable parameter in a
    plain AdamW group."""
    targets = find_target_modules(model, names)
    targeted, seen = [], set()
    for module in targets.values():
        if module.weight.requires_grad and id(module.weight) not in seen:
            seen.add(id(module.weight))
            targeted.append(module.weight)
    if not targeted:
        raise ValueError(f"the {len(targets)} targeted weights (e.g. {next(iter(targets))}) are all frozen; "
                         "GEMS trains them in full, so leave them trainable (do not wrap them in LoRA)")
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    groups = [{"params": targeted, "targeted": True, **targeted_options}]
    if others:
        groups.append({"params": others, "targeted": False})
    return groups
