"""GEMS as a library: multi-subspace gradient tuning with null-space projection, for any PyTorch model.

A researcher's own loop. Each step the optimizer needs the gradient of each task's token-mean loss (rec,
search) besides the joint one. :class:`TaskSplit` gets both from ONE backward pass when every row of the batch
belongs to one task (hooks split each layer's rows by task); the joint gradient of the token-mean loss over
both tasks is their token-count-weighted mean, which ``give`` leaves in ``p.grad``::

    import torch.nn.functional as F
    from gems import (MultiSubspaceAdamW, TaskSplit, build_param_groups, cached_second_moments,
                      find_target_modules, null_space_projector)

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

    split = TaskSplit(model)  # hooks on the trainable layers, idle outside split.rows()
    for batch in loader:  # batch["task"]: 0 (rec) or 1 (search) per row; labels -100 off the targets
        with split.rows(batch["task"]):  # the forward pass whose rows the backward pass splits
            logits = model(input_ids=batch["input_ids"]).logits
        labels = batch["labels"][:, 1:]
        row_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none").sum(1)
        row_targets = (labels != -100).sum(1)
        is_search = batch["task"] == 1
        n_rec, n_search = int(row_targets[~is_search].sum()), int(row_targets[is_search].sum())
        # each task's token-mean loss; one backward pass gives both task gradients
        split.backward(row_loss[~is_search].sum() / max(n_rec, 1), row_loss[is_search].sum() / max(n_search, 1))
        split.give(opt, n_rec, n_search)  # p.grad = joint gradient; task gradients and losses to the optimizer
        opt.step()
        log(opt.last_stats)  # gates, basis refreshes, SVD seconds, skipped refreshes

Gradient accumulation: one ``rows()`` forward and one ``backward`` per micro-batch, each task's loss divided by
that task's target count over the whole step, then one ``give``. Rows that mix tasks (a sequence holding
both): call ``backward`` without ``rows()``, which takes one backward pass per task through the shared graph.
A task missing from a step gets count 0 (its gradients are then ignored and its gate is 0).
``multi_subspace=False`` gives GaLore; then the task gradients are optional (``loss.backward()`` will do).
"""
#: each public name and the submodule that defines it; a name is imported on first use (PEP 562), so that
#: ``gems.atomic`` (which the benchmark's light entry points use) does not pull in torch
_EXPORTS = {
    "gating": ("GATE_MODES", "GateConfig", "TaskSignals", "compute_gates"),
    "nullspace": ("LowRankProjector", "NullSpaceInfo", "cached_second_moments", "collect_feature_moments",
                  "collect_second_moments", "load_second_moments", "null_space_info",
                  "null_space_low_rank_from_eigh", "null_space_projector", "null_space_projector_from_eigh",
                  "save_second_moments", "second_moment_key", "symmetric_eigh"),
    "optimizer": ("MOMENT_POLICIES", "TASK_BASES", "MultiSubspaceAdamW"),
    "projector": ("SVD_METHODS", "compute_basis", "orthogonal_complement", "project", "project_back",
                  "projection_side"),
    "task_split": ("RowSplitError", "TaskSplit"),
    "targets": ("DEFAULT_TARGETS", "LLAMA_LIKE_TARGETS", "T5_TARGETS", "build_param_groups", "find_target_modules"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gems' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
