"""Null-space projection: keep weight updates out of the feature directions that carry general knowledge.

Three steps, each usable alone:

1. :func:`collect_second_moments` runs a general-domain corpus through the model and accumulates, per
   targeted layer, the uncentred second moment K = E[f fᵀ] of its output features (``side="output"``, the
   release) or its input features (``side="input"``, AlphaEdit style) over real tokens;
   :func:`collect_feature_moments` collects both sides in one pass.
2. :func:`null_space_projector` splits K's spectrum into a knowledge space (large eigenvalues) and a null
   space (the rest) and returns P = U_null U_nullᵀ. The optimizer applies it as G <- P·G (output side, P is
   out×out: the update's columns avoid the outputs' knowledge directions) or G <- G·P (input side, P is in×in:
   ΔW·x ≈ 0 for inputs x in the knowledge span, so the layer's outputs on general text do not move).
3. :func:`save_second_moments` / :func:`load_second_moments` / :func:`cached_second_moments` cache K on disk
   under keys from :func:`second_moment_key`, so the corpus pass runs once per (backbone, corpus, size, side).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from .atomic import atomic_write

log = logging.getLogger(__name__)

FeatureSide = Literal["output", "input"]
FEATURE_SIDES = ("output", "input")
NULL_RULES = ("threshold", "energy")
_MASK_KEYS = ("attention_mask", "decoder_attention_mask")


def _check_side(side: str) -> None:
    if side not in FEATURE_SIDES:
        raise ValueError(f"side={side!r} is unknown; use 'output' (K over layer outputs, the release) "
                         "or 'input' (K over layer inputs)")


def _token_mask(masks: list[Tensor], leading_shape: torch.Size) -> Tensor | None:
    """The batch mask whose [batch, length] shape matches the features', or None (then all positions count)."""
    for mask in masks:
        if mask.shape == leading_shape:
            return mask.bool()
    return None


@torch.no_grad()
def collect_second_moments(model: nn.Module, modules: Mapping[str, nn.Module],
                           batches: Iterable[Mapping[str, Tensor] | Tensor], side: FeatureSide = "output",
                           *, progress: bool = False) -> dict[str, Tensor]:
    """Per module name, the float32 uncentred second moment of its output (or input) features.

    A batch is a dict of model keyword arguments (moved to the model's device) or a tensor passed positionally.
    Padding does not count: when the batch has an ``attention_mask`` (or ``decoder_attention_mask``) whose
    shape equals the features' leading [batch, length] shape, only positions where it is non-zero are used;
    features matching no mask count at every position. The model runs in eval mode and gets its mode back.
    """
    _check_side(side)
    return collect_feature_moments(model, modules, batches, (side,), progress=progress)[side]


@torch.no_grad()
def collect_feature_moments(model: nn.Module, modules: Mapping[str, nn.Module],
                            batches: Iterable[Mapping[str, Tensor] | Tensor],
                            sides: Iterable[FeatureSide] = FEATURE_SIDES, *,
                            progress: bool = False) -> dict[str, dict[str, Tensor]]:
    """:func:`collect_second_moments` for several sides in one pass over the corpus: side -> name -> K.

    The forward pass is paid once for both sides. Layers fed the same input tensor (q/k/v, gate/up) share one
    input-side product per batch. The products run in float32 with autocast disabled even when the caller
    runs the model under autocast: K's small eigenvalues decide the null space, and bf16 products would
    blur them.
    """
    sides = tuple(dict.fromkeys(sides))
    for side in sides:
        _check_side(side)
    if not sides:
        raise ValueError("sides is empty; pass 'output' and/or 'input'")
    if not modules:
        raise ValueError("modules is empty; pass the targeted layers (e.g. gems.find_target_modules(model))")
    sums: dict[tuple[str, str], Tensor] = {}
    counts = {(side, name): 0 for side in sides for name in modules}
    masks: list[Tensor] = []
    shared_inputs: dict[int, tuple[Tensor, Tensor, int]] = {}  # id(input) -> (input, moment, rows), per batch

    def moment(feats: Tensor) -> tuple[Tensor, int]:
        if isinstance(feats, tuple):
            feats = feats[0]
        mask = _token_mask(masks, feats.shape[:-1])
        rows = (feats[mask] if mask is not None else feats.reshape(-1, feats.shape[-1])).float()
        with torch.autocast(rows.device.type, enabled=False):
            return rows.T @ rows, rows.shape[0]

    def add(key: tuple[str, str], value: Tensor, n: int) -> None:
        sums[key] = sums[key] + value if key in sums else value.clone()
        counts[key] += n

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            if "output" in sides:
                add(("output", name), *moment(output))
            if "input" in sides:
                x = inputs[0]
                if id(x) not in shared_inputs:  # the entry keeps x alive, so its id stays unique per batch
                    shared_inputs[id(x)] = (x, *moment(x))
                add(("input", name), *shared_inputs[id(x)][1:])
        return hook

    device = next(model.parameters()).device
    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc=f"second moments ({'+'.join(sides)})", disable=not progress):
            if isinstance(batch, Tensor):
                masks = []
                model(batch.to(device))
            else:
                batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                masks = [batch[k] for k in _MASK_KEYS if isinstance(batch.get(k), Tensor)]
                model(**batch)
            shared_inputs.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    silent = sorted({name for (_, name), n in counts.items() if n == 0})
    if silent:
        raise RuntimeError(f"modules {silent[:5]} saw no token during collection; make sure the batches run "
                           "them (an encoder-decoder needs decoder inputs or labels for its decoder layers)")
    return {side: {name: sums[(side, name)] / counts[(side, name)] for name in modules} for side in sides}


@dataclass(frozen=True)
class NullSpaceInfo:
    """What :func:`null_space_projector` decided for one layer (log it)."""

    null_dim: int
    total_dim: int
    rule: str
    cutoff: float  # eigenvalue boundary: tau for "threshold", smallest knowledge eigenvalue for "energy"
    fallback_used: bool
    eig_max: float
    eig_median: float
    eig_min: float

    @property
    def empty(self) -> bool:
        return self.null_dim == 0

    def summary(self) -> str:
        note = " (FALLBACK: smallest directions)" if self.fallback_used else ""
        return (f"null space {self.null_dim}/{self.total_dim} by {self.rule} (cutoff {self.cutoff:.3g}){note}; "
                f"eigenvalues max {self.eig_max:.3g}, median {self.eig_median:.3g}, min {self.eig_min:.3g}")


def _check_rule(rule: str, energy: float, fallback_fraction: float | None) -> None:
    if rule not in NULL_RULES:
        raise ValueError(f"rule={rule!r} is unknown; use one of {NULL_RULES}")
    if rule == "energy" and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy={energy} must lie in (0, 1]")
    if fallback_fraction is not None and not 0.0 < fallback_fraction <= 1.0:
        raise ValueError(f"fallback_fraction={fallback_fraction} must lie in (0, 1] or be None")


def null_space_info(eigenvalues: Tensor, rule: str = "threshold", tau: float = 2e-2, energy: float = 0.99,
                    fallback_fraction: float | None = None) -> NullSpaceInfo:
    """The decision of :func:`null_space_projector` from K's eigenvalues alone (ascending, as
    ``torch.linalg.eigvalsh`` returns them): cheap enough to compare many rules on one spectrum."""
    _check_rule(rule, energy, fallback_fraction)
    eigvals = eigenvalues.detach().float().clamp_min(0.0)
    d = eigvals.shape[0]
    if rule == "threshold":
        null_dim, cutoff = int((eigvals < tau).sum()), tau
    else:
        descending = eigvals.flip(0)
        total = float(descending.sum())
        if total == 0.0:
            knowledge_dim = 0
        else:
            reached = (descending.cumsum(0) / total >= energy).nonzero()
            knowledge_dim = int(reached[0]) + 1 if len(reached) else d
        null_dim = d - knowledge_dim
        cutoff = float(descending[knowledge_dim - 1]) if knowledge_dim else 0.0
    fallback_used = False
    if null_dim == 0 and fallback_fraction is not None:
        null_dim, fallback_used = math.ceil(fallback_fraction * d), True
    return NullSpaceInfo(null_dim=null_dim, total_dim=d, rule=rule, cutoff=cutoff, fallback_used=fallback_used,
                         eig_max=float(eigvals[-1]), eig_median=float(eigvals.median()), eig_min=float(eigvals[0]))


def null_space_projector(K: Tensor, rule: str = "threshold", tau: float = 2e-2, energy: float = 0.99,
                         fallback_fraction: float | None = None, *,
                         low_rank: bool = False) -> tuple[Tensor | "LowRankProjector", NullSpaceInfo]:
    """P = U_null U_nullᵀ (float32, d×d) for the second-moment matrix K, and what was decided; with
    ``low_rank=True`` the same P as a :class:`LowRankProjector` (cheaper for the optimizer to apply).

    ``threshold``: eigenvalues of K below ``tau`` span the null space (K is symmetric PSD, so its eigenvalues
    are its singular values). ``energy``: the fewest top eigen-directions holding at least ``energy`` of the
    eigenvalue sum form the knowledge space; the rest is null. An empty null space gives P = 0, which freezes
    the layer, and is logged; only when ``fallback_fraction`` is given do the smallest
    ceil(fallback_fraction·d) directions become the null space instead (the release used 0.05).
    """
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square matrix, got shape {tuple(K.shape)}")
    _check_rule(rule, energy, fallback_fraction)
    eigenvalues, eigenvectors = symmetric_eigh(K)
    build = null_space_low_rank_from_eigh if low_rank else null_space_projector_from_eigh
    return build(eigenvalues, eigenvectors, rule, tau, energy, fallback_fraction)


def symmetric_eigh(K: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending eigenvalues and eigenvectors of K's symmetric part, in float32: the one expensive step of
    :func:`null_space_projector` (seconds for a 1536×1536 K on a CPU), worth caching when many runs share K."""
    K = K.detach().float()
    return torch.linalg.eigh((K + K.T) / 2)


def null_space_projector_from_eigh(eigenvalues: Tensor, eigenvectors: Tensor, rule: str = "threshold",
                                   tau: float = 2e-2, energy: float = 0.99,
                                   fallback_fraction: float | None = None) -> tuple[Tensor, NullSpaceInfo]:
    """:func:`null_space_projector` from a decomposition made by :func:`symmetric_eigh` (same result)."""
    info = null_space_info(eigenvalues, rule, tau, energy, fallback_fraction)
    u_null = eigenvectors[:, :info.null_dim].float()  # eigenvalues ascend, so the null directions come first
    _warn_decision(info, rule, fallback_fraction)
    return u_null @ u_null.T, info


def _warn_decision(info: NullSpaceInfo, rule: str, fallback_fraction: float | None) -> None:
    if info.fallback_used:
        log.warning("NULL SPACE EMPTY under %s; FALLING BACK to the smallest %d of %d directions "
                    "(fallback_fraction=%s). %s", rule, info.null_dim, info.total_dim, fallback_fraction,
                    info.summary())
    elif info.empty:
        log.warning("null space empty under %s: P = 0 freezes this layer; loosen tau/energy or pass "
                    "fallback_fraction. %s", rule, info.summary())


@dataclass(frozen=True)
class LowRankProjector:
    """The null-space projector P in factored form: ``P = B·Bᵀ`` (``complement=False``, B spans the null space)
    or ``P = I − B·Bᵀ`` (``complement=True``, B spans the knowledge space), B with orthonormal columns.

    Applying it to a d×c matrix costs 2·d·k·c multiply-adds with k = B's width instead of d²·c for the dense
    P; :meth:`from_bases` keeps the narrower of the two bases, so k <= d/2. ``MultiSubspaceAdamW`` accepts it
    wherever it accepts a dense projector (``set_null_projector``)."""

    basis: Tensor
    complement: bool

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    @classmethod
    def from_bases(cls, null_basis: Tensor, knowledge_basis: Tensor) -> "LowRankProjector":
        """From orthonormal bases of the null space (d×k) and of its complement (d×(d−k)): the narrower one."""
        d = null_basis.shape[0]
        if knowledge_basis.shape[0] != d or null_basis.shape[1] + knowledge_basis.shape[1] != d:
            raise ValueError(f"null basis {tuple(null_basis.shape)} and knowledge basis "
                             f"{tuple(knowledge_basis.shape)} must split the same {d} dimensions")
        if null_basis.shape[1] <= knowledge_basis.shape[1]:
            return cls(null_basis.detach().float().contiguous(), complement=False)
        return cls(knowledge_basis.detach().float().contiguous(), complement=True)

    def to(self, device=None, dtype=None) -> "LowRankProjector":
        return LowRankProjector(self.basis.to(device=device, dtype=dtype), self.complement)

    def left(self, x: Tensor) -> Tensor:
        """P·x."""
        inside = self.basis @ (self.basis.T @ x)
        return x - inside if self.complement else inside

    def right(self, x: Tensor) -> Tensor:
        """x·P."""
        inside = (x @ self.basis) @ self.basis.T
        return x - inside if self.complement else inside

    def dense(self) -> Tensor:
        """P as a d×d matrix (for checks; the optimizer never forms it)."""
        return self.left(torch.eye(self.dim, dtype=self.basis.dtype, device=self.basis.device))


@dataclass(frozen=True)
class DenseProjector:
    """A d×d projector P behind the interface of :class:`LowRankProjector` (what the optimizer applies)."""

    matrix: Tensor

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    def to(self, device=None, dtype=None) -> "DenseProjector":
        return DenseProjector(self.matrix.detach().to(device=device, dtype=dtype))

    def left(self, x: Tensor) -> Tensor:
        """P·x."""
        return self.matrix @ x

    def right(self, x: Tensor) -> Tensor:
        """x·P."""
        return x @ self.matrix


def null_space_low_rank_from_eigh(eigenvalues: Tensor, eigenvectors: Tensor, rule: str = "threshold",
                                  tau: float = 2e-2, energy: float = 0.99,
                                  fallback_fraction: float | None = None) -> tuple[LowRankProjector, NullSpaceInfo]:
    """:func:`null_space_projector_from_eigh` in factored form (the same P, see :class:`LowRankProjector`)."""
    info = null_space_info(eigenvalues, rule, tau, energy, fallback_fraction)
    _warn_decision(info, rule, fallback_fraction)
    vectors = eigenvectors.float()  # eigenvalues ascend, so the null directions come first
    return LowRankProjector.from_bases(vectors[:, :info.null_dim], vectors[:, info.null_dim:]), info


def second_moment_key(backbone: str, layer: str, corpus: str, n_samples: int, side: FeatureSide) -> str:
    """Cache key of one layer's K; every field that changes K is in it."""
    _check_side(side)
    fields = (backbone, corpus, f"n={n_samples}", side, layer)
    if any("::" in f for f in fields):
        raise ValueError(f"cache key fields {fields} must not contain '::' (the key separator)")
    return "::".join(fields)


def save_second_moments(path: str | os.PathLike, moments: Mapping[str, Tensor]) -> None:
    """Write ``moments`` (key -> K) to a safetensors file atomically (:mod:`gems.atomic`): a reader finds the old
    file or the new one, never a part."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in moments.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_second_moments(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a file written by :func:`save_second_moments` (key -> float32 K on the CPU)."""
    return load_file(str(path))


def cached_second_moments(path: str | os.PathLike, model: nn.Module, modules: Mapping[str, nn.Module],
                          batches: Callable[[], Iterable], *, backbone: str, corpus: str, n_samples: int,
                          side: FeatureSide = "output", progress: bool = False) -> dict[str, Tensor]:
    """Per module name, K from the cache at ``path``; when any is missing, collect all of them from
    ``batches()`` (called only then) and merge them into the cache file."""
    keys = {name: second_moment_key(backbone, name, corpus, n_samples, side) for name in modules}
    cached = load_second_moments(path) if Path(path).exists() else {}
    if all(key in cached for key in keys.values()):
        log.info("second moments of %d layers loaded from %s", len(keys), path)
        return {name: cached[key] for name, key in keys.items()}
    moments = collect_second_moments(model, modules, batches(), side, progress=progress)
    save_second_moments(path, {**cached, **{keys[name]: K for name, K in moments.items()}})
    log.info("second moments of %d layers collected and cached in %s", len(keys), path)
    return moments
