"""Low-rank projection: shapes on both sides, orthonormal bases, randomized vs exact SVD, guards."""
import pytest
import torch

from gems import SVD_METHODS, compute_basis, orthogonal_complement, project, project_back, projection_side


@pytest.mark.parametrize("svd", SVD_METHODS)
@pytest.mark.parametrize(("shape", "side"), [((12, 7), "right"), ((7, 12), "left"), ((9, 9), "right")])
def test_projection_shapes_and_orthonormal_basis(shape, side, svd):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    assert projection_side(shape) == side
    basis = compute_basis(g, 4, side, svd=svd)
    assert basis.shape == ((shape[1] if side == "right" else shape[0]), 4)
    torch.testing.assert_close(basis.T @ basis, torch.eye(4), atol=1e-5, rtol=0)
    low = project(g, basis, side)
    assert low.shape == ((shape[0], 4) if side == "right" else (4, shape[1]))
    assert project_back(low, basis, side).shape == shape


def test_rank_is_clipped_and_full_rank_round_trips():
    g = torch.randn(5, 8)
    basis = compute_basis(g, 100, "left")
    assert basis.shape == (5, 5)
    torch.testing.assert_close(project_back(project(g, basis, "left"), basis, "left"), g, atol=1e-5, rtol=0)


def test_randomized_svd_finds_the_exact_top_subspace_deterministically():
    gen = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(30, 3, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(20, 3, generator=gen)).Q
    g = u @ torch.diag(torch.tensor([10.0, 5.0, 2.0])) @ v.T + 1e-4 * torch.randn(30, 20, generator=gen)
    exact = compute_basis(g, 3, "right")
    rng_before = torch.get_rng_state()
    randomized = compute_basis(g, 3, "right", svd="randomized", oversample=4, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG stream is untouched
    torch.testing.assert_close(randomized @ randomized.T, exact @ exact.T, atol=1e-4, rtol=0)
    assert torch.equal(compute_basis(g, 3, "right", svd="randomized", oversample=4, seed=7), randomized)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_zero_or_nonfinite_gradient_gives_no_basis(bad):
    g = torch.zeros(6, 4) if bad == 0.0 else torch.randn(6, 4)
    g[2, 1] = bad
    assert compute_basis(g, 2, "right") is None


def test_orthogonal_complement_spans_the_rest():
    basis = compute_basis(torch.randn(10, 6), 2, "right")
    complement = orthogonal_complement(basis)
    assert complement.shape == (6, 4)
    torch.testing.assert_close(complement.T @ complement, torch.eye(4), atol=1e-5, rtol=0)
    assert (basis.T @ complement).abs().max() < 1e-6


def test_invalid_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"2-D weight, got shape \(3,\)"):
        projection_side((3,))
    with pytest.raises(ValueError, match="svd='qr'"):
        compute_basis(torch.randn(3, 3), 2, "right", svd="qr")
    with pytest.raises(ValueError, match="rank=0"):
        compute_basis(torch.randn(3, 3), 0, "right")


@pytest.mark.parametrize(("shape", "side"), [((40, 24), "right"), ((24, 40), "left")])
def test_exact_basis_is_the_svd_top_subspace(shape, side):
    """The Gram-matrix eigendecomposition gives the top singular subspace a float64 SVD gives."""
    gen = torch.Generator().manual_seed(3)
    m, n = shape
    u = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen, dtype=torch.float64)).Q
    spectrum = torch.logspace(0, -3, min(m, n), dtype=torch.float64)  # distinct values, three decades
    g = u @ torch.diag(spectrum) @ v.T
    k = 6
    uu, _, vh = torch.linalg.svd(g, full_matrices=False)
    reference = vh[:k].T if side == "right" else uu[:, :k]
    basis = compute_basis(g.float(), k, side, svd="exact")
    torch.testing.assert_close(basis.double() @ basis.double().T, reference @ reference.T, atol=1e-5, rtol=0)


def test_exact_basis_captures_the_svd_energy_of_a_rank_deficient_gradient():
    """Rank 3 < requested 5: the top-3 directions are determined and hold all the energy; the other two are
    any orthonormal completion (as with an SVD)."""
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(30, 3, generator=gen) @ torch.randn(3, 12, generator=gen)
    basis = compute_basis(g, 5, "right", svd="exact")
    torch.testing.assert_close(basis.T @ basis, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close((g @ basis).norm(), g.norm(), atol=0, rtol=1e-5)
