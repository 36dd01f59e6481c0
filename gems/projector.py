"""Low-rank gradient projection with GaLore semantics, written for this project.

A basis is a plain float32 tensor with orthonormal columns, so optimizer state that holds it stays loadable
with ``torch.load(..., weights_only=True)``. Side rule "std": for a gradient G (m×n) with m >= n the basis is
the top right singular vectors V_r (n×r) and the projected gradient is G·V_r (m×r); otherwise it is the top
left singular vectors U_r (m×r) and the projected gradient is U_rᵀ·G (r×n). Either way the small dimension of
the projected gradient is the rank, so Adam moments on it are cheap.

``compute_basis`` returns None for an all-zero or non-finite gradient instead of failing inside the SVD; the
caller decides what that means (the optimizer keeps the previous basis, or defers when it has none).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Side = Literal["left", "right"]
SVD_METHODS = ("exact", "randomized")


def projection_side(shape: torch.Size | tuple[int, ...]) -> Side:
    """The "std" rule: project on the right (columns) when m >= n, else on the left (rows)."""
    if len(shape) != 2:
        raise ValueError(f"low-rank projection needs a 2-D weight, got shape {tuple(shape)}; "
                         "put this parameter in a non-targeted (plain AdamW) group")
    m, n = shape
    return "right" if m >= n else "left"


def compute_basis(grad: Tensor, rank: int, side: Side, *, svd: str = "exact", oversample: int = 8,
                  niter: int = 2, seed: int = 0) -> Tensor | None:
    """Top-``rank`` singular vectors of ``grad`` on ``side`` (float32, orthonormal columns).

    The rank is clipped to min(m, n). ``svd="randomized"`` runs a seeded randomized range finder with
    ``rank + oversample`` probe columns and ``niter`` power iterations; its private generator leaves the
    global RNG untouched and makes the basis a function of (gradient, seed), so a resumed run repeats it.
    Returns None when ``grad`` is all zero or has a non-finite entry.
    """
    if svd not in SVD_METHODS:
        raise ValueError(f"svd={svd!r} is not supported; use one of {SVD_METHODS}")
    if rank < 1:
        raise ValueError(f"rank={rank} must be >= 1")
    g = grad.detach().float()
    if not bool(torch.isfinite(g).all()) or not bool(g.any()):
        return None
    k = min(rank, *g.shape)
    if svd == "exact":
        basis = _top_singular_vectors(g, k, side)
    else:
        u, v = _randomized_svd(g, min(k + oversample, *g.shape), niter, seed)
        basis = v[:, :k] if side == "right" else u[:, :k]
    return basis.contiguous()


def _top_singular_vectors(g: Tensor, k: int, side: Side) -> Tensor:
    """Exact top-``k`` right (``side="right"``) or left singular vectors of ``g``, as the top eigenvectors of
    the Gram matrix GᵀG or GGᵀ (n×n or m×m).

    The same subspace a full SVD returns, at a third of its cost on a CPU: under the "std" side rule the
    Gram matrix is the small side's (576×576 for SmolLM2's largest weights), and one symmetric
    eigendecomposition of it replaces an SVD that also builds the long side's vectors. Forming the Gram
    matrix squares the spectrum's dynamic range, so directions whose singular value is below ~3e-4 of the
    largest are resolved less precisely than by an SVD; they carry less than 1e-7 of the gradient's energy,
    and on SmolLM2 gradients the basis captures the SVD basis's energy to within 3e-6 (relative), the SVD's
    own float32 disagreement with a float64 reference (tests/test_gems_projector.py checks both)."""
    gram = g.T @ g if side == "right" else g @ g.T
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vectors[:, -k:].flip(1)


def _randomized_svd(g: Tensor, probes: int, niter: int, seed: int) -> tuple[Tensor, Tensor]:
    """Halko-style randomized SVD: sketch the range with Gaussian probes, refine by power iterations."""
    generator = torch.Generator(device=g.device).manual_seed(seed)
    omega = torch.randn(g.shape[1], probes, generator=generator, device=g.device, dtype=g.dtype)
    q = torch.linalg.qr(g @ omega).Q
    for _ in range(niter):
        q = torch.linalg.qr(g.T @ q).Q
        q = torch.linalg.qr(g @ q).Q
    u_small, _, vh = torch.linalg.svd(q.T @ g, full_matrices=False)
    return q @ u_small, vh.T


def orthogonal_complement(basis: Tensor) -> Tensor:
    """Orthonormal columns spanning every direction orthogonal to ``basis`` (d×(d−k) for a d×k basis)."""
    q = torch.linalg.qr(basis, mode="complete").Q
    return q[:, basis.shape[1]:].contiguous()


def project(grad: Tensor, basis: Tensor, side: Side) -> Tensor:
    """Low-rank coordinates of ``grad``: G·V (right side) or Uᵀ·G (left side)."""
    return grad @ basis if side == "right" else basis.T @ grad


def project_back(low: Tensor, basis: Tensor, side: Side) -> Tensor:
    """Map low-rank coordinates back to the full weight shape: L·Vᵀ (right side) or U·L (left side)."""
    return low @ basis.T if side == "right" else basis @ low
