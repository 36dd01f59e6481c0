"""GEMS as a library: multi-subspace gradient tuning with null-space projection, for any PyTorch model.

A researcher's own loop. Two backward passes (rec subset, search subset) give all three gradient signals: the
joint gradient of the token-mean loss over both tasks is the token-count-weighted mean of the task gradients::

    import torch
    from gems import (MultiSubspaceAdamW, build_param_groups, find_target_modules, cached_second_moments,
                      null_space_projector)

    opt = MultiSubspaceAdamW(build_param_groups(model, rank=128, update_gap=200), lr=5e-4, weight_decay=0.01)

    # optional null-space projection, K cached per (backbone, layer, corpus, n_samples, side)
    modules = find_target_modules(model)
    moments = cached_second_moments("cache/K.safetensors", model, modules, lambda: general_batches,
                                    backbone="t5-base", corpus="wiki10k", n_samples=10_000, side="input")
    for name, module in modules.items():
        # low_rank=True: P as the narrower of its null and knowledge bases (same P, cheaper to apply)
        P, info = null_space_projector(moments[name], rule="threshold", tau=2e-2, low_rank=True)
        print(name, info.summary())
        opt.set_null_projector(module.weight, P, side="input")

    params = [p for g in opt.param_groups for p in g["params"]]
    for rec_batch, search_batch in loader:  # the two task subsets of one batch
        task_grads, counts, losses = {}, {}, {}
        for task, batch in (("rec", rec_batch), ("search", search_batch)):
            opt.zero_grad()
            loss = model(**batch).loss  # token-mean over this task's target tokens
            loss.backward()
            task_grads[task] = {p: p.grad.clone() for p in params if p.grad is not None}
            counts[task] = int((batch["labels"] != -100).sum())
            losses[task] = loss.item()
        n = counts["rec"] + counts["search"]
        for p in params:  # the joint gradient goes in p.grad
            parts = [counts[t] * task_grads[t][p] for t in task_grads if p in task_grads[t]]
            p.grad = sum(parts) / n if parts else None
        opt.set_task_gradients(task_grads["rec"], task_grads["search"], counts["rec"], counts["search"],
                               losses["rec"], losses["search"])
        opt.step()
        log(opt.last_stats)  # gates, basis refreshes, SVD seconds, skipped refreshes

A task missing from a batch is passed with count 0 (and empty gradients). ``multi_subspace=False`` gives
GaLore; then ``set_task_gradients`` is optional.
"""
from .gating import GATE_MODES, GateConfig, TaskSignals, compute_gates
from .nullspace import (LowRankProjector, NullSpaceInfo, cached_second_moments, collect_feature_moments,
                        collect_second_moments, load_second_moments, null_space_info, null_space_low_rank_from_eigh,
                        null_space_projector, null_space_projector_from_eigh, save_second_moments,
                        second_moment_key, symmetric_eigh)
from .optimizer import MOMENT_POLICIES, TASK_BASES, MultiSubspaceAdamW
from .projector import SVD_METHODS, compute_basis, orthogonal_complement, project, project_back, projection_side
from .targets import DEFAULT_TARGETS, LLAMA_LIKE_TARGETS, T5_TARGETS, build_param_groups, find_target_modules

__all__ = [
    "GATE_MODES", "GateConfig", "TaskSignals", "compute_gates",
    "LowRankProjector", "NullSpaceInfo", "cached_second_moments", "collect_feature_moments",
    "collect_second_moments", "load_second_moments", "null_space_info", "null_space_low_rank_from_eigh",
    "null_space_projector", "null_space_projector_from_eigh", "save_second_moments", "second_moment_key",
    "symmetric_eigh",
    "MOMENT_POLICIES", "TASK_BASES", "MultiSubspaceAdamW",
    "SVD_METHODS", "compute_basis", "orthogonal_complement", "project", "project_back", "projection_side",
    "DEFAULT_TARGETS", "LLAMA_LIKE_TARGETS", "T5_TARGETS", "build_param_groups", "find_target_modules",
]
