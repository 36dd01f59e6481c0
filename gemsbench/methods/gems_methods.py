"""GEMS and its ablations as harness methods, on top of the standalone :mod:`gems` library.

| method        | subspaces                          | null-space projection | task gradients |
|---------------|------------------------------------|-----------------------|----------------|
| `gems`        | shared + search + rec (method.md §3) | yes (§4)            | yes            |
| `gems_no_msd` | one shared subspace                | yes                   | no             |
| `gems_no_nsp` | shared + search + rec              | no                    | yes            |
| `galore`      | one shared subspace                | no                    | no             |

Task gradients (the loop's ``task_backward``, :class:`gems.TaskSplit`) come from one backward pass per
micro-batch in the ``prompt`` format (rows split by task) and from one backward pass per task in
``timeline``. The multi-subspace methods leave the targeted weights' joint gradient to the optimizer, which
forms it from the two task gradients one weight at a time (``joint_from_task_gradients``).

Every weight is trainable (GEMS is full-parameter subspace tuning): the attention and MLP projections go
through the low-rank subspaces, everything else — embeddings with the new item tokens, norms, an untied head —
gets plain AdamW in the optimizer's non-targeted group.

Hyper-parameters (keys of ``defaults``; [release] = the authors' code on T5-base, [ours] = this project):

* AdamW: ``lr`` 5e-4, ``weight_decay`` 0.01, ``betas`` (0.9, 0.999), ``eps`` 1e-6 [release].
* ``rank`` 128 / ``task_rank`` 64 [ours]. The release's 1024 / 512 on T5-base (width 768) is full rank —
  no subspace at all. Scaled to SmolLM2's width 576 that would stay full rank, so we keep GaLore's usual
  rank-to-width ratio (≈ 1/4: rank 128 at width 512 in the GaLore paper) and the release's task rank = rank / 2.
  128 also fits below the 192 outputs of SmolLM2's k/v projections, which ``task_basis: complement`` needs.
* ``update_gap`` 20 [ours]: the release's 200 exceeds the embedded runs' 16–30 steps, which would freeze the
  first step's basis for the whole run; 20 gives refreshes at steps 0 and 20 of config/reference.yaml's 30
  (config/default.yaml sets 8 for its 16 steps; the sensitivity sweep varies it).
* ``scale`` α 1.0 [release] (GaLore's pre-training recipe uses 0.25).
* ``svd`` exact [release] | randomized [ours]; ``svd_oversample`` 8 (randomized only).
* ``projection_dtype`` auto [ours] | float32 | bfloat16: the dtype of the projection products, which dominate a
  step (bases, SVDs and moments stay float32); auto = bfloat16 when the run trains under bf16 autocast, whose
  backward pass already rounds gradients to bf16 (tests/test_gems_fast_paths.py bounds the difference).
* ``moment_policy`` keep [release] | reset | reproject; ``task_basis`` raw [release] | complement [paper].
* ``gate`` heuristic [release] | fixed; ``gate_rec_weight`` (fixed), ``gate_mix`` 0.4/0.4/0.2 (heuristic) [release].
* Null space: ``null_side`` output [release] | input [ours, AlphaEdit]; ``null_rule`` threshold [release] |
  energy [ours]; ``null_tau`` 2e-2 [release]; ``null_energy`` 0.99 [ours]; ``null_fallback_fraction`` 0.05
  [release]: a layer with no eigenvalue under τ takes its smallest 5 % as null space instead of being frozen
  (on SmolLM2's output features τ = 2e-2 leaves most down_proj layers with none); None freezes such layers.
  ``null_project_update`` True [ours]: project the Adam-normalised update again (see gems.optimizer).
* Knowledge space: ``knowledge_corpus`` enwiki_gensim, ``knowledge_articles`` 64, ``knowledge_max_tokens`` 256
  [ours] — which K (gemsbench.knowledge). The release used 10,000 Wikipedia articles of ≤ 512 tokens, far beyond
  a CPU; 64 × 256 (≈ 16 k tokens, ~10 per feature dimension of the widest layer) estimates every K from
  several samples per dimension at a cost the embedded run affords (README: "Sizing the embedded default").
* ``log_subspace_cosines`` False: log search/rec gradient cosines inside the shared and task subspaces on every
  step (extra projections); they are logged on the loop's conflict steps (``train.conflict_every``) anyway.
* ``targets``: last name components of the targeted layers.

The knowledge space comes from the DAG's ``knowledge_space`` rule (cached per backbone). When a run starts
without it (a method used outside the DAG), it is collected on the spot with a warning — the same code, so
the same K — rather than failing: the file is a cache, not an input anyone edits.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from gems import (GATE_MODES, GateConfig, MultiSubspaceAdamW, build_param_groups, find_target_modules,
                  null_space_low_rank_from_eigh)
from gems.nullspace import FEATURE_SIDES, NULL_RULES
from gems.optimizer import MOMENT_POLICIES, PROJECTION_DTYPES, TASK_BASES
from gems.projector import SVD_METHODS
from gems.targets import DEFAULT_TARGETS

from ..atomic import atomic_write_json
from ..corpus import CORPORA
from ..distributed import current, main_first
from ..knowledge import (KnowledgeSpace, ensure_eigendecompositions, ensure_knowledge_space, knowledge_space_path,
                         layer_type_summary, load_eigendecompositions, null_space_row)
from ..modeling import resolve_precision
from ..train import TrainSettings, resolve_device
from .base import LLMMethod, RunContext, TaskGradients, register_method
from .hparams import ADAMW_TYPES, boolean, choice, integer, names, number, weights

log = logging.getLogger(__name__)

ADAMW = {"lr": 5e-4, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-6}
SUBSPACE = {"rank": 128, "update_gap": 20, "scale": 1.0, "svd": "exact", "svd_oversample": 8,
            "moment_policy": "keep", "projection_dtype": "auto", "targets": list(DEFAULT_TARGETS)}
MULTI_SUBSPACE = {"task_rank": 64, "task_basis": "raw", "gate": "heuristic", "gate_rec_weight": 0.5,
                  "gate_mix": [0.4, 0.4, 0.2], "log_subspace_cosines": False}
NULL_SPACE = {"null_side": "output", "null_rule": "threshold", "null_tau": 2e-2, "null_energy": 0.99,
              "null_fallback_fraction": 0.05, "null_project_update": True,
              "knowledge_corpus": "enwiki_gensim", "knowledge_articles": 64, "knowledge_max_tokens": 256}
SUBSPACE_TYPES = {"rank": integer(1), "update_gap": integer(1), "scale": number(0, low_open=True),
                  "svd": choice(*SVD_METHODS), "svd_oversample": integer(0), "moment_policy": choice(*MOMENT_POLICIES),
                  "projection_dtype": choice("auto", *PROJECTION_DTYPES), "targets": names()}
MULTI_SUBSPACE_TYPES = {"task_rank": integer(1, optional=True), "task_basis": choice(*TASK_BASES),
                        "gate": choice(*GATE_MODES), "gate_rec_weight": number(0, 1), "gate_mix": weights(3),
                        "log_subspace_cosines": boolean()}
NULL_SPACE_TYPES = {"null_side": choice(*FEATURE_SIDES), "null_rule": choice(*NULL_RULES),
                    "null_tau": number(0, low_open=True), "null_energy": number(0, 1, low_open=True),
                    "null_fallback_fraction": number(0, 1, low_open=True, optional=True),
                    "null_project_update": boolean(), "knowledge_corpus": choice(*CORPORA),
                    "knowledge_articles": integer(1), "knowledge_max_tokens": integer(1)}
#: per-step optimizer statistics worth a line in the training log (gates and cosines: multi-subspace only)
LOGGED_STATS = ("refreshes", "skipped_refreshes", "deferred", "nonfinite_skips", "svd_seconds")
TASK_STATS = ("gate_rec", "gate_search", "cos_full", "cos_shared", "cos_task")


class SubspaceMethod(LLMMethod):
    """Full-parameter low-rank subspace tuning with :class:`gems.MultiSubspaceAdamW`; subclasses choose
    whether the subspaces are split by task and whether updates avoid the knowledge space."""

    multi_subspace: ClassVar[bool]
    #: the DAG builds the knowledge space before training a method that sets this
    needs_knowledge_space: ClassVar[bool]

    def __init__(self, hparams: dict | None = None):
        super().__init__(hparams)
        self.context: RunContext | None = None

    def fit(self, ctx: RunContext) -> dict:
        self.context = ctx  # build_optimizer needs the backbone, cache and run directory
        return super().fit(ctx)

    def prepare_model(self, model: nn.Module, item_token_ids: list[int]) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def build_optimizer(self, model: nn.Module, total_steps: int) -> MultiSubspaceAdamW:
        hp = self.hparams
        options = dict(rank=hp["rank"], update_gap=hp["update_gap"], scale=hp["scale"], svd=hp["svd"],
                       svd_oversample=hp["svd_oversample"], moment_policy=hp["moment_policy"],
                       projection_dtype=self.projection_dtype(), multi_subspace=self.multi_subspace)
        gating = None
        if self.multi_subspace:
            options.update(task_rank=hp["task_rank"], task_basis=hp["task_basis"])
            gating = GateConfig(mode=hp["gate"], rec_weight=hp["gate_rec_weight"], mix=tuple(hp["gate_mix"]))
        if self.needs_knowledge_space:
            options["null_project_update"] = hp["null_project_update"]
        optimizer = MultiSubspaceAdamW(build_param_groups(model, hp["targets"], **options), lr=hp["lr"],
                                       betas=tuple(hp["betas"]), eps=hp["eps"], weight_decay=hp["weight_decay"],
                                       gating=gating,
                                       record_projected_cosines=self.multi_subspace and hp["log_subspace_cosines"])
        if self.needs_knowledge_space:
            self.attach_null_space(model, optimizer)
        return optimizer

    def projection_dtype(self) -> str:
        """``auto`` follows the run's training precision: bf16 products under bf16 autocast (whose backward
        pass already rounds the gradients to bf16), float32 otherwise."""
        choice = self.hparams["projection_dtype"]
        if choice != "auto":
            return choice
        if self.context is None:
            return "float32"
        precision = resolve_precision(TrainSettings.from_dict(self.context.train).precision,
                                      resolve_device(self.context.device))
        return "bfloat16" if precision == "bf16" else "float32"

    def knowledge_space(self) -> KnowledgeSpace:
        hp = self.hparams
        return KnowledgeSpace(hp["knowledge_corpus"], hp["knowledge_articles"], hp["knowledge_max_tokens"])

    def attach_null_space(self, model: nn.Module, optimizer: MultiSubspaceAdamW) -> None:
        """Projectors from the cached knowledge space on every targeted layer; the decisions are logged and
        saved to ``{run_dir}/null_space.json``. Runs again on resume, before the optimizer state is loaded."""
        if self.context is None:
            raise RuntimeError(f"method {self.name!r} needs its run context (backbone, cache directory, run "
                               "directory) for the null space: train it with method.fit(ctx)")
        hp, ctx = self.hparams, self.context
        modules = find_target_modules(model, hp["targets"])  # raises when no layer matches
        space = self.knowledge_space()
        cache_root = ctx.backbone.get("cache_root", "cache")
        path = knowledge_space_path(cache_root, ctx.backbone, space)
        with main_first():
            if not path.exists():
                log.warning("knowledge space %s is not cached (the DAG's knowledge_space rule makes it); "
                            "collecting it now on the plain backbone", path)
                ensure_knowledge_space(ctx.backbone, cache_root, space)
            ensure_eigendecompositions(path)
        decompositions = load_eigendecompositions(path, ctx.backbone, space, hp["null_side"], modules)
        option = {"tau": hp["null_tau"]} if hp["null_rule"] == "threshold" else {"energy": hp["null_energy"]}
        value = next(iter(option.values()))
        rows = []
        for name, module in modules.items():
            # factored P (the narrower of the null and knowledge bases): the same P, cheaper to apply
            projector, info = null_space_low_rank_from_eigh(*decompositions[name], rule=hp["null_rule"],
                                                            fallback_fraction=hp["null_fallback_fraction"],
                                                            **option)
            optimizer.set_null_projector(module.weight, projector, side=hp["null_side"])
            rows.append(null_space_row(name, hp["null_side"], hp["null_rule"], value, info))
            log.info("%s: %s", name, info.summary())
        summary = layer_type_summary(rows)
        for entry in summary:
            log.info("null space of %s (%s side): mean %.1f / %d", entry["layer_type"], entry["side"],
                     entry["mean_null_dim"], entry["total_dim"])
        if not current().main:
            return  # the other processes of a multi-process run attach the same projectors; rank 0 writes
        atomic_write_json({"knowledge_space": str(path), "corpus": space.corpus, "articles": space.articles,
                           "max_tokens": space.max_tokens, "side": hp["null_side"], "rule": hp["null_rule"],
                           "value": value, "fallback_fraction": hp["null_fallback_fraction"],
                           "by_layer_type": summary, "layers": rows}, Path(ctx.run_dir) / "null_space.json")

    def joint_from_task_gradients(self, optimizer: MultiSubspaceAdamW) -> list[nn.Parameter]:
        """Multi-subspace: the targeted weights (the optimizer forms each one's joint gradient from its task
        gradients as it steps it, so no full-size joint gradient is held for all of them at once)."""
        if not self.multi_subspace:
            return []
        return [p for g in optimizer.param_groups if g["targeted"] for p in g["params"]]

    def optimizer_step(self, optimizer: MultiSubspaceAdamW, task_grads: TaskGradients | None) -> dict[str, Any]:
        if self.multi_subspace:
            tg = task_grads
            optimizer.set_task_gradients(dict(zip(tg.params, tg.rec)), dict(zip(tg.params, tg.search)),
                                         tg.n_rec, tg.n_search, tg.loss_rec, tg.loss_search, derive_joint=True)
            # the cosines inside the shared and task subspaces: every step when asked, else on conflict steps
            optimizer.record_projected_cosines = bool(self.hparams["log_subspace_cosines"] or self.conflict_step)
        optimizer.step()
        keys = LOGGED_STATS + (TASK_STATS if self.multi_subspace else ())
        out = {key: optimizer.last_stats[key] for key in keys if key in optimizer.last_stats}
        # the loop leaves measurement time out of the method's step time
        out["log_seconds"] = optimizer.last_stats.get("cosine_seconds", 0.0)
        return out


@register_method("gems")
class Gems(SubspaceMethod):
    """GEMS: shared + search + rec subspaces, fused by gates, with null-space projection."""

    multi_subspace = True
    needs_knowledge_space = True
    uses_task_gradients = True
    defaults = {**ADAMW, **SUBSPACE, **MULTI_SUBSPACE, **NULL_SPACE}
    hparam_types = {**ADAMW_TYPES, **SUBSPACE_TYPES, **MULTI_SUBSPACE_TYPES, **NULL_SPACE_TYPES}


@register_method("gems_no_msd")
class GemsNoMSD(SubspaceMethod):
    """Ablation without Multi-Subspace Decomposition: one shared subspace, with null-space projection."""

    multi_subspace = False
    needs_knowledge_space = True
    defaults = {**ADAMW, **SUBSPACE, **NULL_SPACE}
    hparam_types = {**ADAMW_TYPES, **SUBSPACE_TYPES, **NULL_SPACE_TYPES}


@register_method("gems_no_nsp")
class GemsNoNSP(SubspaceMethod):
    """Ablation without Null-Space Projection: shared + search + rec subspaces."""

    multi_subspace = True
    needs_knowledge_space = False
    uses_task_gradients = True
    defaults = {**ADAMW, **SUBSPACE, **MULTI_SUBSPACE}
    hparam_types = {**ADAMW_TYPES, **SUBSPACE_TYPES, **MULTI_SUBSPACE_TYPES}


@register_method("galore")
class GaLore(SubspaceMethod):
    """GaLore: one shared low-rank subspace, no null space (GEMS without both components)."""

    multi_subspace = False
    needs_knowledge_space = False
    defaults = {**ADAMW, **SUBSPACE}
    hparam_types = {**ADAMW_TYPES, **SUBSPACE_TYPES}
