"""MultiSubspaceAdamW: GEMS's optimizer (multi-subspace decomposition + optional null-space projection).

For every targeted 2-D weight W and step:

1. null-space projection (if a projector is attached) of the joint gradient ``p.grad`` and both task gradients;
2. three low-rank subspaces, each with its own SVD basis and Adam moments: ``shared`` (rank ``rank``) fed the
   joint gradient, ``rec`` and ``search`` (rank ``task_rank``) fed their task gradients. A basis refreshes at
   the weight's first step and every ``update_gap`` steps. ``task_basis="complement"`` takes each task basis
   from the part of the task gradient outside the shared subspace, so it is orthogonal to the shared basis;
3. fusion ``update = U_shared + g_rec·U_rec + g_src·U_src`` where each U is the bias-corrected Adam direction
   projected back and times ``scale``; with a null projector the fused update is projected once more, because
   Adam's element-wise normalisation does not keep a gradient's null-space property (group key
   ``null_project_update``; False = the release, which projects the gradients only);
4. ``W <- W·(1 − lr·weight_decay) − lr·update`` (decoupled decay, as torch.optim.AdamW; the decay itself is not
   null-projected).

With ``multi_subspace=False`` only the shared subspace is used: plain GaLore (the gems_no_msd ablation).
Non-targeted parameters get exactly torch.optim.AdamW's update on the joint gradient.

Cost. A step is dominated by matrix products with the bases, so the implementation never forms a full-size
intermediate it can avoid: a null projector acting on the basis's dimension is folded into the basis once per
refresh (G·P·V = G·(P·V)); one acting on the other dimension multiplies the low-rank coordinates (P·(G·V)),
not the gradient; full-size P·G is formed only for the SVD at a refresh. A projector given in factored form
(:class:`~gems.nullspace.LowRankProjector`, ``P = B·Bᵀ`` or ``I − B·Bᵀ`` with B the narrower of the null and
knowledge bases) is applied through B, never as a d×d matrix. The three back-projections and the
decay go into the weight as one ``addmm_`` (W·(1 − lr·wd) − lr·[D_1 … D_k]·[B_1 … B_k]ᵀ). Step 1 above is
therefore carried out inside steps 2 and 3; the result is the same up to float rounding.

Basis refresh rules. An all-zero or non-finite gradient at a refresh keeps the previous basis (counted in
``skipped_refreshes``). A subspace that has no basis yet *defers*: it sits out the step (contributes nothing,
no moments created) and retries at every later step until a usable gradient arrives; a task absent from a step
(count 0 or gradient None) also sits out, and misses a refresh due then. A non-finite gradient never reaches the
Adam moments: the subspace sits out that step (``nonfinite_skips``).

On a refresh the moments follow ``moment_policy``: ``keep`` (the release / GaLore), ``reset`` (zero moments,
restart bias correction) or ``reproject``: with C = B_oldᵀ·B_new, first moment M <- M·C (right side) or Cᵀ·M
(left side); second moment V <- V·(C∘C) or (C∘C)ᵀ·V, the variance of the new coordinates if the old ones were
uncorrelated (non-negative by construction, no clamping needed).

State holds only tensors and plain Python values. Null projectors are not state (they are large and
recomputable from the cached second moments): after ``load_state_dict`` reattach them with
``set_null_projector``; a step on a weight whose saved state used one that is not reattached raises.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .gating import GateConfig, TaskSignals, compute_gates
from .nullspace import FEATURE_SIDES, DenseProjector, LowRankProjector
from .projector import SVD_METHODS, Side, compute_basis, orthogonal_complement, project, project_back, \
    projection_side

MOMENT_POLICIES = ("keep", "reset", "reproject")
#: dtype of the projection matrix products (bases, moments and SVDs stay float32)
PROJECTION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TASK_BASES = ("raw", "complement")
TASKS = ("rec", "search")


@dataclass
class _TaskStep:
    """What ``set_task_gradients`` hands to the next ``step``."""

    grads: dict[str, Mapping[Tensor, Tensor | None]]
    gates: dict[str, float]
    joint_weight: float | None = None  # n_search / n when targeted weights without p.grad derive the joint

    def joint(self, p: Tensor) -> Tensor | None:
        """The joint gradient of ``p`` as the count-weighted mean of its task gradients (``derive_joint``)."""
        rec, search = self.grads["rec"].get(p), self.grads["search"].get(p)
        if rec is None or search is None:
            return rec if search is None else search
        return torch.lerp(rec, search, self.joint_weight)


@dataclass
class _StepStats:
    refreshes: int = 0
    skipped_refreshes: int = 0
    deferred: int = 0
    nonfinite_skips: int = 0
    svd_seconds: float = 0.0
    cosine_seconds: float = 0.0  # time spent on record_projected_cosines (a measurement, not the update)
    cos_sums: dict[str, list[float]] = field(default_factory=dict)  # name -> [dot, |a|², |b|²]

    def add_cosine(self, name: str, a: Tensor, b: Tensor) -> None:
        sums = self.cos_sums.setdefault(name, [0.0, 0.0, 0.0])
        sums[0] += float((a * b).sum())
        sums[1] += float((a * a).sum())
        sums[2] += float((b * b).sum())

    def cosines(self) -> dict[str, float | None]:
        return {f"cos_{name}": (dot / math.sqrt(na * nb) if na > 0 and nb > 0 else None)
                for name, (dot, na, nb) in self.cos_sums.items()}


def _adam_direction(sub: dict, grad: Tensor, beta1: float, beta2: float, eps: float, factor: float) -> Tensor:
    """Advance the moments in ``sub`` with ``grad``; return ``factor`` × the bias-corrected Adam direction
    m̂/(√v̂ + eps), in one new tensor (the low-rank states of SmolLM2 hold ~50 M values: every temporary counts)."""
    sub["step"] += 1
    sub["exp_avg"].lerp_(grad, 1 - beta1)
    sub["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    direction = sub["exp_avg_sq"].sqrt().div_(math.sqrt(1 - beta2 ** sub["step"])).add_(eps)
    return torch.div(sub["exp_avg"], direction, out=direction).mul_(factor / (1 - beta1 ** sub["step"]))


def _global_norm(tensors: Iterable[Tensor | None]) -> float:
    """L2 norm over all given tensors, with a single device-to-host transfer."""
    norms = [torch.linalg.vector_norm(t.detach().float()) for t in tensors if t is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])))


def _to_device(value: Any, device: torch.device) -> Any:
    """Copy every tensor in a nested state value to ``device``, keeping its dtype."""
    if isinstance(value, Tensor):
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _check_group(group: dict) -> None:
    """Reject a targeted group whose options cannot work, naming the value and the fix."""
    if not group["targeted"]:
        return
    checks = {"rank": group["rank"] >= 1, "update_gap": group["update_gap"] >= 1,
              "task_rank": group["task_rank"] is None or group["task_rank"] >= 1,
              "svd": group["svd"] in SVD_METHODS, "moment_policy": group["moment_policy"] in MOMENT_POLICIES,
              "task_basis": group["task_basis"] in TASK_BASES, "svd_oversample": group["svd_oversample"] >= 0,
              "projection_dtype": group["projection_dtype"] in PROJECTION_DTYPES}
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"targeted group has invalid {key}={group[key]!r}; see MultiSubspaceAdamW: "
                             f"svd in {SVD_METHODS}, moment_policy in {MOMENT_POLICIES}, task_basis in "
                             f"{TASK_BASES}, projection_dtype in {tuple(PROJECTION_DTYPES)}, ranks/update_gap "
                             ">= 1, svd_oversample >= 0")
    for p in group["params"]:
        projection_side(p.shape)  # raises for a non-2-D weight
        if group["task_basis"] == "complement" and group["multi_subspace"] and group["rank"] >= min(p.shape):
            raise ValueError(f"task_basis='complement' needs rank < min(m, n), but rank={group['rank']} "
                             f"fills the whole {tuple(p.shape)} weight, leaving no complement; lower the "
                             "rank or use task_basis='raw'")


def _projector_tensors(projector: DenseProjector | LowRankProjector) -> list[Tensor]:
    return [projector.basis if isinstance(projector, LowRankProjector) else projector.matrix]


class MultiSubspaceAdamW(Optimizer):
    """AdamW whose targeted 2-D weights are updated in shared + search + rec low-rank subspaces (see module doc).

    Group keys (constructor values are the defaults): ``targeted`` (False = plain AdamW), ``rank``,
    ``task_rank`` (None = rank // 2), ``update_gap``, ``scale``, ``svd`` ("exact" | "randomized"),
    ``svd_oversample``, ``moment_policy``, ``task_basis``, ``multi_subspace``, ``null_project_update``,
    ``projection_dtype`` ("float32" | "bfloat16": the dtype of the projection matrix products, which dominate
    a step's cost; bfloat16 is ~4× faster on CPUs with bf16 units and rounds each projected value to 8 bits of
    mantissa, as a bf16-autocast forward pass does its activations; bases, SVDs and Adam moments stay float32).

    ``last_stats`` after each step: ``gate_rec``/``gate_search`` (None without task gradients); this step's
    ``refreshes``, ``skipped_refreshes``, ``deferred``, ``nonfinite_skips``, ``svd_seconds``,
    ``cosine_seconds`` (time of the cosine recording); running
    ``refreshes_total``, ``skipped_refreshes_total``, ``svd_seconds_total`` (since construction, not saved);
    with ``record_projected_cosines`` the whole-model cosines between the search and rec gradients over the
    targeted weights: ``cos_full`` (after null projection), ``cos_shared`` (inside the shared subspace),
    ``cos_task`` (each task's component in its own subspace), None where undefined.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, rank: int = 128, task_rank: int | None = None,
                 update_gap: int = 200, scale: float = 1.0, svd: str = "exact", svd_oversample: int = 8,
                 moment_policy: str = "keep", task_basis: str = "raw", multi_subspace: bool = True,
                 null_project_update: bool = True, projection_dtype: str = "float32",
                 gating: GateConfig | None = None, record_projected_cosines: bool = False):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW hyper-parameters lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}: need lr, eps, weight_decay >= 0 and betas in [0, 1)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, targeted=False, rank=rank,
                        task_rank=task_rank, update_gap=update_gap, scale=scale, svd=svd,
                        svd_oversample=svd_oversample, moment_policy=moment_policy, task_basis=task_basis,
                        multi_subspace=multi_subspace, null_project_update=null_project_update,
                        projection_dtype=projection_dtype)
        super().__init__(params, defaults)
        self.gating = gating or GateConfig()
        self.record_projected_cosines = record_projected_cosines
        self.last_stats: dict[str, Any] = {}
        self._null: dict[Tensor, tuple[DenseProjector | LowRankProjector, str]] = {}
        # derived operands, rebuilt when what they derive from changes (checked by identity): not state
        self._operand_cache: dict[tuple[Tensor, str], tuple] = {}  # (p, subspace) -> (basis, P, dtype, operand)
        self._projector_cache: dict[Tensor, tuple] = {}  # p -> (P, dtype, P in dtype)
        self._task_step: _TaskStep | None = None
        self._totals = {"refreshes": 0, "skipped_refreshes": 0, "svd_seconds": 0.0}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            _check_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    def _targeted_params(self) -> dict[Tensor, dict]:
        return {p: g for g in self.param_groups if g["targeted"] for p in g["params"]}

    def held_tensors(self) -> list[Tensor]:
        """Tensors the optimizer keeps outside ``state``: the attached null projectors and the cached projection
        operands (bases folded with a projector, or cast to the projection dtype). Memory accounting counts them
        with the state (``gemsbench.train.optimizer_state_bytes``); an operand that is the basis itself is the
        same storage and counted once there."""
        held = [t for projector, _ in self._null.values() for t in _projector_tensors(projector)]
        held += [cached[3] for cached in self._operand_cache.values()]
        held += [t for cast in self._projector_cache.values() for t in _projector_tensors(cast[2])]
        return held

    def set_null_projector(self, param: Tensor, projector: Tensor | LowRankProjector | None,
                           side: str = "output") -> None:
        """Attach P to a targeted weight: G <- P·G (``output``, P is out×out) or G <- G·P (``input``, in×in).
        P is a dense matrix or a :class:`~gems.nullspace.LowRankProjector` (the same P in factored form, cheaper
        to apply by d / (2k)). ``None`` detaches it. Not saved in ``state_dict``; reattach after loading."""
        if param not in self._targeted_params():
            raise ValueError(f"parameter of shape {tuple(param.shape)} is not in a targeted group of this "
                             "optimizer; null projectors apply to targeted weights only")
        for key in [k for k in self._operand_cache if k[0] is param]:
            del self._operand_cache[key]
        self._projector_cache.pop(param, None)
        if projector is None:
            self._null.pop(param, None)
            self.state[param].pop("null_side", None)
            return
        if side not in FEATURE_SIDES:
            raise ValueError(f"side={side!r} is unknown; use one of {FEATURE_SIDES}")
        dim = param.shape[0] if side == "output" else param.shape[1]
        if not isinstance(projector, LowRankProjector):
            if projector.dim() != 2 or projector.shape[0] != projector.shape[1]:
                raise ValueError(f"a dense projector must be a square matrix, got shape {tuple(projector.shape)}")
            projector = DenseProjector(projector)
        if projector.dim != dim:
            raise ValueError(f"{side}-side projector for a {tuple(param.shape)} weight must be {dim}×{dim}, got "
                             f"{(projector.dim, projector.dim)}; build it from K over the layer's {side} features")
        self._null[param] = (projector.to(device=param.device, dtype=torch.float32), side)

    def set_task_gradients(self, rec: Mapping[Tensor, Tensor | None], search: Mapping[Tensor, Tensor | None],
                           n_rec: int, n_search: int, loss_rec: float, loss_search: float, *,
                           derive_joint: bool = False) -> None:
        """Give the next ``step`` the per-task gradients (of each task's token-mean loss), keyed by parameter.

        A task with count 0 is absent: its gradients are ignored and its gate is 0. The gradient-norm share of
        the heuristic gate uses the global L2 norm over every tensor passed here. With ``derive_joint`` a
        targeted weight whose ``p.grad`` is None takes as joint gradient the count-weighted mean of its task
        gradients, formed for one weight at a time during the step: the caller need not hold a full-size joint
        gradient for every targeted weight at once beside the two task gradients.
        """
        if n_rec < 0 or n_search < 0:
            raise ValueError(f"task counts must be >= 0, got n_rec={n_rec}, n_search={n_search}")
        known = {p for g in self.param_groups for p in g["params"]}
        grads, norms = {}, {}
        for task, given, count in (("rec", rec, n_rec), ("search", search, n_search)):
            for p, g in given.items():
                if p not in known:
                    raise ValueError(f"{task} gradient given for a parameter of shape {tuple(p.shape)} that is "
                                     "not in this optimizer; key the dicts by the optimizer's parameters")
                if g is not None and g.shape != p.shape:
                    raise ValueError(f"{task} gradient of shape {tuple(g.shape)} for a parameter of shape "
                                     f"{tuple(p.shape)}")
            grads[task] = given if count > 0 else {}
            norms[task] = _global_norm(grads[task].values())
        signals = TaskSignals(n_rec, n_search, float(loss_rec), float(loss_search), norms["rec"], norms["search"])
        g_rec, g_search = compute_gates(self.gating, signals)
        self._task_step = _TaskStep(grads=grads, gates={"rec": g_rec, "search": g_search},
                                    joint_weight=n_search / (n_rec + n_search) if derive_joint else None)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        task_step, self._task_step = self._task_step, None
        if task_step is None and any(g["targeted"] and g["multi_subspace"] for g in self.param_groups):
            raise RuntimeError("multi-subspace step without task gradients: call optimizer.set_task_gradients("
                               "rec, search, n_rec, n_search, loss_rec, loss_search) before every step(), or "
                               "set multi_subspace=False for single-subspace GaLore")
        stats = _StepStats()
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None and group["targeted"] and task_step is not None \
                        and task_step.joint_weight is not None:
                    grad = task_step.joint(p)  # one full-size temporary, freed after this weight's step
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("MultiSubspaceAdamW does not support sparse gradients")
                if group["targeted"]:
                    self._step_targeted(p, grad, group, task_step, stats)
                else:
                    self._step_dense(p, group)
        for key in self._totals:
            self._totals[key] += getattr(stats, key)
        self.last_stats = {
            "gate_rec": task_step.gates["rec"] if task_step else None,
            "gate_search": task_step.gates["search"] if task_step else None,
            "refreshes": stats.refreshes, "skipped_refreshes": stats.skipped_refreshes,
            "deferred": stats.deferred, "nonfinite_skips": stats.nonfinite_skips,
            "svd_seconds": stats.svd_seconds,
            "cosine_seconds": stats.cosine_seconds,
            **{f"{key}_total": value for key, value in self._totals.items()},
            **(stats.cosines() if self.record_projected_cosines else {}),
        }
        return loss

    def _step_dense(self, p: Tensor, group: dict) -> None:
        """torch.optim.AdamW's update, operation for operation."""
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                         exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        p.mul_(1 - group["lr"] * group["weight_decay"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = state["exp_avg_sq"].sqrt().div_(math.sqrt(1 - beta2 ** state["step"])).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** state["step"]))

    def _null_for(self, p: Tensor) -> tuple[DenseProjector | LowRankProjector, str] | None:
        """The projector attached to ``p`` and its side, checked against the side its state was trained with."""
        attached = self._null.get(p)
        recorded = self.state[p].get("null_side")
        if attached is None:
            if recorded is not None:
                raise RuntimeError(f"the state of the {tuple(p.shape)} weight was trained with a {recorded}-side "
                                   "null projector that is not attached; reattach it with set_null_projector "
                                   "(after load_state_dict) or detach it explicitly with projector=None")
            return None
        if recorded is not None and recorded != attached[1]:
            raise RuntimeError(f"the {tuple(p.shape)} weight was trained with a {recorded}-side null projector "
                               f"but a {attached[1]}-side one is attached; attach the {recorded}-side projector")
        self.state[p]["null_side"] = attached[1]
        return attached

    @staticmethod
    def _null_full(grad: Tensor, null: tuple[DenseProjector | LowRankProjector, str] | None) -> Tensor:
        """P·G (output side) or G·P (input side) at full size: for SVD refreshes and cosines only."""
        if null is None:
            return grad
        projector, side = null
        return projector.left(grad) if side == "output" else projector.right(grad)

    def _operands(self, p: Tensor, name: str, basis: Tensor,
                  null: tuple[DenseProjector | LowRankProjector, str] | None, side: Side,
                  dtype: torch.dtype) -> tuple[Tensor, DenseProjector | LowRankProjector | None]:
        """(basis to project with, projector for the low-rank coordinates or None) for one subspace, in the
        group's projection dtype; cached until the basis or the projector changes.

        A null projector acting on the basis's dimension folds into it once per basis: G·P·V = G·(P·V) and
        (P·U)ᵀ·G = Uᵀ·(P·G). One acting on the other dimension is applied to the low-rank coordinates:
        P·(G·V) (m×r) or (Uᵀ·G)·P (r×n), never to the full gradient."""
        projector, null_side = null if null is not None else (None, None)
        fold = projector is not None and (side == "right") == (null_side == "input")
        cached = self._operand_cache.get((p, name))
        if cached is None or cached[0] is not basis or cached[1] is not projector or cached[2] != dtype:
            cached = (basis, projector, dtype, (projector.left(basis) if fold else basis).to(dtype))
            self._operand_cache[(p, name)] = cached
        if projector is None or fold:
            return cached[3], None
        cast = self._projector_cache.get(p)
        if cast is None or cast[0] is not projector or cast[1] != dtype:
            cast = self._projector_cache[p] = (projector, dtype, projector.to(dtype=dtype))
        return cached[3], cast[2]

    def _step_targeted(self, p: Tensor, grad: Tensor, group: dict, task_step: _TaskStep | None,
                       stats: _StepStats) -> None:
        state = self.state[p]
        state.setdefault("step", 0)
        side = projection_side(p.shape)
        refresh_due = state["step"] % group["update_gap"] == 0
        null = self._null_for(p)
        parts = []
        shared = self._subspace_part(p, "shared", grad, group["rank"], None, 1.0, group, side, null,
                                     refresh_due, stats)
        if shared is not None:
            parts.append(shared)
        task_grads: dict[str, Tensor] = {}
        if task_step is not None and (group["multi_subspace"] or self.record_projected_cosines):
            task_grads = {task: g for task in TASKS if (g := task_step.grads[task].get(p)) is not None}
        shared_basis = state["shared"]["basis"] if "shared" in state else None
        if group["multi_subspace"]:
            exclude = shared_basis if group["task_basis"] == "complement" else None
            task_rank = group["task_rank"] or max(1, group["rank"] // 2)
            for task, grad in task_grads.items():
                part = self._subspace_part(p, task, grad, task_rank, exclude, task_step.gates[task], group, side,
                                           null, refresh_due, stats)
                if part is not None:
                    parts.append(part)
        if self.record_projected_cosines and len(task_grads) == 2:
            start = time.perf_counter()
            projected = {task: self._null_full(g.float(), null) for task, g in task_grads.items()}
            self._record_cosines(state, projected, shared_basis, side, stats)
            stats.cosine_seconds += time.perf_counter() - start
        state["step"] += 1
        self._apply_update(p, parts, group, side)

    def _subspace_part(self, p: Tensor, name: str, grad: Tensor, rank: int, exclude: Tensor | None,
                       weight: float, group: dict, side: Side,
                       null: tuple[DenseProjector | LowRankProjector, str] | None,
                       refresh_due: bool, stats: _StepStats) -> tuple[Tensor, Tensor] | None:
        """One subspace's share of the update as (low-rank factor, basis factor), or None when it sits out.

        The update is ``back(direction)`` times ``weight·scale``; with ``null_project_update`` the null
        projector is already applied to the factors (folded basis, or P on the low-rank direction)."""
        state = self.state[p]
        sub = state.get(name)
        if refresh_due or sub is None:
            basis = self._compute_basis(self._null_full(grad.float(), null), rank, exclude, group, side,
                                        state["step"], stats)
            if basis is None:
                stats.skipped_refreshes += 1
            else:
                stats.refreshes += 1
                sub = state[name] = self._install_basis(sub, basis, p.shape, side, group["moment_policy"])
        if sub is None:
            stats.deferred += 1
            return None
        dtype = PROJECTION_DTYPES[group["projection_dtype"]]
        proj_basis, low_null = self._operands(p, name, sub["basis"], null, side, dtype)
        low = project(grad.to(dtype), proj_basis, side)
        if low_null is not None:
            low = low_null.left(low) if side == "right" else low_null.right(low)
        low = low.float()
        # A non-finite gradient entry makes its projection non-finite, and a non-finite entry makes the sum
        # non-finite (NaN and ±Inf propagate through + and ×): one reduction checks the whole gradient (a
        # projection whose finite entries sum beyond 3e38 would be skipped too).
        if not math.isfinite(float(low.sum())):
            stats.nonfinite_skips += 1
            return None
        beta1, beta2 = group["betas"]
        direction = _adam_direction(sub, low, beta1, beta2, group["eps"], weight * group["scale"])
        if not (group["null_project_update"] and null is not None):
            return direction.to(dtype), sub["basis"].to(dtype)
        direction = direction.to(dtype)
        if low_null is not None:
            direction = low_null.left(direction) if side == "right" else low_null.right(direction)
        return direction, proj_basis

    @staticmethod
    def _apply_update(p: Tensor, parts: list[tuple[Tensor, Tensor]], group: dict, side: Side) -> None:
        """W <- W·(1 − lr·wd) − lr·Σ back(direction): every subspace's back-projection in one matrix product,
        fused with the decay into the weight (no full-size temporary) when the weight is float32."""
        decay, lr = 1 - group["lr"] * group["weight_decay"], group["lr"]
        if not parts:
            p.mul_(decay)
            return
        if side == "right":  # Σ D_i·B_iᵀ = [D_1 … D_k]·[B_1 … B_k]ᵀ
            left = torch.cat([d for d, _ in parts], dim=1)
            right = torch.cat([b for _, b in parts], dim=1).T
        else:  # Σ B_i·D_i = [B_1 … B_k]·[D_1; …; D_k]
            left = torch.cat([b for _, b in parts], dim=1)
            right = torch.cat([d for d, _ in parts], dim=0)
        if p.dtype == left.dtype:
            p.addmm_(left, right, beta=decay, alpha=-lr)  # one pass over W, no full-size temporary
        else:
            p.mul_(decay).add_((left @ right).to(p.dtype), alpha=-lr)

    def _compute_basis(self, grad: Tensor, rank: int, exclude: Tensor | None, group: dict, side: Side,
                       seed: int, stats: _StepStats) -> Tensor | None:
        """A new basis for ``grad``; with ``exclude``, one inside the orthogonal complement of that basis."""
        start = time.perf_counter()
        options = dict(svd=group["svd"], oversample=group["svd_oversample"], seed=seed)
        if exclude is None:
            basis = compute_basis(grad, rank, side, **options)
        else:
            complement = orthogonal_complement(exclude)
            inner = compute_basis(project(grad, complement, side), rank, side, **options)
            basis = None if inner is None else complement @ inner
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)
        stats.svd_seconds += time.perf_counter() - start
        return basis

    @staticmethod
    def _install_basis(sub: dict | None, basis: Tensor, shape: torch.Size, side: Side, policy: str) -> dict:
        """A subspace's state with ``basis``, its moments carried over by ``policy``."""
        low_shape = (shape[0], basis.shape[1]) if side == "right" else (basis.shape[1], shape[1])
        if sub is None or policy == "reset":
            return {"basis": basis, "step": 0, "exp_avg": basis.new_zeros(low_shape),
                    "exp_avg_sq": basis.new_zeros(low_shape)}
        if policy == "reproject":
            change = sub["basis"].T @ basis
            if side == "right":
                sub.update(exp_avg=sub["exp_avg"] @ change, exp_avg_sq=sub["exp_avg_sq"] @ change.square())
            else:
                sub.update(exp_avg=change.T @ sub["exp_avg"], exp_avg_sq=change.square().T @ sub["exp_avg_sq"])
        sub["basis"] = basis
        return sub

    def _record_cosines(self, state: dict, task_grads: dict[str, Tensor], shared_basis: Tensor | None,
                        side: Side, stats: _StepStats) -> None:
        """Cosines between the search and rec gradients: full, inside the shared subspace, and between their
        components in their own task subspaces (summed over targeted weights into whole-model cosines)."""
        rec, search = task_grads["rec"], task_grads["search"]
        stats.add_cosine("full", rec, search)
        if shared_basis is not None:
            stats.add_cosine("shared", project(rec, shared_basis, side), project(search, shared_basis, side))
        if "rec" in state and "search" in state:
            in_own = {t: project_back(project(g, state[t]["basis"], side), state[t]["basis"], side)
                      for t, g in task_grads.items()}
            stats.add_cosine("task", in_own["rec"], in_own["search"])

    def load_state_dict(self, state_dict: dict) -> None:
        """Load hyper-parameters through torch, then each state entry ourselves: tensors keep their saved dtype
        (torch would cast float32 bases and moments to a bf16 parameter's dtype) and move to the parameter's
        device as copies, so the loaded optimizer never shares tensors with ``state_dict``."""
        super().load_state_dict({**state_dict, "state": {}})
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            if saved_id in state_dict["state"]:
                self.state[p] = _to_device(state_dict["state"][saved_id], p.device)
