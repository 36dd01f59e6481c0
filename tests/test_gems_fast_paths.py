"""The optimizer's cost-saving paths compute what method.md §4 describes: null projection of the full gradient,
projection, Adam, back-projection, null projection of the update — whichever side the projector and the
basis act on — and bfloat16 projection products stay within bf16 rounding of the float32 ones."""
import pytest
import torch
from torch import nn

from gems import (LowRankProjector, MultiSubspaceAdamW, compute_basis, null_space_low_rank_from_eigh,
                  null_space_projector_from_eigh, project, project_back, projection_side, symmetric_eigh)


def gaussian(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def projector(dim: int, null_dim: int, seed: int, factored: bool = False) -> torch.Tensor | LowRankProjector:
    q = torch.linalg.qr(gaussian((dim, dim), seed)).Q
    if factored:
        return LowRankProjector.from_bases(q[:, :null_dim], q[:, null_dim:])
    return q[:, :null_dim] @ q[:, :null_dim].T


@pytest.mark.parametrize("null_project_update", [True, False])
@pytest.mark.parametrize("null_side", ["output", "input"])
@pytest.mark.parametrize("shape", [(10, 6), (6, 10)], ids=["right-basis", "left-basis"])
def test_first_step_equals_the_full_size_recipe(shape, null_side, null_project_update):
    lr, wd, eps, scale, rank = 0.1, 0.05, 1e-8, 0.5, 3
    w = nn.Parameter(gaussian(shape, 0))
    start = w.detach().clone()
    P = projector(shape[0] if null_side == "output" else shape[1], 4, 1)
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], lr=lr, eps=eps, weight_decay=wd, rank=rank,
                             scale=scale, multi_subspace=False, null_project_update=null_project_update)
    opt.set_null_projector(w, P, null_side)
    grad = gaussian(shape, 2)
    w.grad = grad.clone()
    opt.step()

    def null(x):
        return P @ x if null_side == "output" else x @ P

    side = projection_side(shape)
    basis = compute_basis(null(grad), rank, side)
    low = project(null(grad), basis, side)
    update = scale * project_back(low / (low.abs() + eps), basis, side)  # first Adam step: m̂/√v̂ = sign
    if null_project_update:
        update = null(update)
    torch.testing.assert_close(w.detach(), start * (1 - lr * wd) - lr * update, atol=1e-6, rtol=1e-5)


def trained_change(projection_dtype: str, round_gradients: bool = False, factored: bool = False,
                   null_dims: tuple[int, int] = (30, 30)) -> list[torch.Tensor]:
    """Weight change of a right-basis and a left-basis weight (with output- and input-side null projectors)
    after six multi-subspace steps on fixed gradients, with a basis refresh at step 3.

    The moments follow the refresh by ``reproject``: the trajectory is then a continuous function of float
    rounding. Under ``keep`` it is not: an eigenvector's sign is arbitrary, a rounding-level change of the
    gradient can flip it at a refresh, and the kept moments then push along the flipped direction — the
    trajectory jumps by ~15 % of the weight change (measured: a 1e-7 perturbation of a dense projector
    flips two search-basis vectors of the 24×48 weight in 4 of 20 draws), so two runs that differ only in
    rounding (factored vs dense projector, one CPU's BLAS vs another's) would disagree for no fault of theirs."""
    shapes = [(48, 24), (24, 48)]
    ws = [nn.Parameter(gaussian(s, i)) for i, s in enumerate(shapes)]
    opt = MultiSubspaceAdamW([{"params": ws, "targeted": True}], lr=1e-2, rank=8, task_rank=4, update_gap=3,
                             moment_policy="reproject", projection_dtype=projection_dtype)
    opt.set_null_projector(ws[0], projector(48, null_dims[0], 5, factored), "output")
    opt.set_null_projector(ws[1], projector(48, null_dims[1], 6, factored), "input")
    rounded = (lambda g: g.bfloat16().float()) if round_gradients else (lambda g: g)
    for step in range(6):
        rec = {w: rounded(gaussian(w.shape, 100 + 10 * step + i)) for i, w in enumerate(ws)}
        search = {w: rounded(gaussian(w.shape, 200 + 10 * step + i)) for i, w in enumerate(ws)}
        for w in ws:
            w.grad = (rec[w] + search[w]) / 2
        opt.set_task_gradients(rec, search, 4, 4, 1.0, 1.0)
        opt.step()
    return [w.detach() - gaussian(s, i) for i, (w, s) in enumerate(zip(ws, shapes))]


def test_bfloat16_products_deviate_no_more_than_bfloat16_gradients():
    """bf16 products change the training trajectory by about as much as rounding the gradients to bf16 does
    (what a bf16 backward pass does anyway): measured 2.5 % vs 6.4 % and 0.33 % vs 0.39 % of the weight
    change; a wrong operand would be off by ~100 %."""
    exact = trained_change("float32")
    for products, gradients, reference in zip(trained_change("bfloat16"), trained_change("float32", True), exact):
        products_error = torch.linalg.vector_norm(products - reference)
        assert 0 < products_error < 1.5 * torch.linalg.vector_norm(gradients - reference)


def test_unknown_projection_dtype_is_refused():
    with pytest.raises(ValueError, match="projection_dtype"):
        MultiSubspaceAdamW([{"params": [nn.Parameter(torch.ones(3, 2))], "targeted": True}],
                           projection_dtype="float16")


@pytest.mark.parametrize("null_dim", [5, 30])
def test_low_rank_projector_is_the_dense_projector(null_dim):
    """Either factored form (null basis when it is the narrower, knowledge basis otherwise) is the same P."""
    dense, low = projector(40, null_dim, 3), projector(40, null_dim, 3, factored=True)
    assert low.complement == (null_dim > 20) and low.basis.shape[1] == min(null_dim, 40 - null_dim)
    torch.testing.assert_close(low.dense(), dense, atol=1e-5, rtol=0)
    x = gaussian((40, 7), 9)
    torch.testing.assert_close(low.left(x), dense @ x, atol=1e-5, rtol=0)
    torch.testing.assert_close(low.right(x.T), x.T @ dense, atol=1e-5, rtol=0)


def test_low_rank_projector_from_eigh_matches_the_dense_one():
    a = gaussian((30, 200), 4)
    eig = symmetric_eigh(a @ a.T / 200 * torch.linspace(1e-3, 1, 30))
    for tau in (0.05, 0.5):
        dense, info = null_space_projector_from_eigh(*eig, tau=tau)
        low, low_info = null_space_low_rank_from_eigh(*eig, tau=tau)
        assert info == low_info
        torch.testing.assert_close(low.dense(), dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("null_dims", [(30, 30), (10, 40)], ids=["knowledge-basis", "mixed"])
def test_factored_projectors_train_like_dense_ones(null_dims):
    for factored, dense in zip(trained_change("float32", factored=True, null_dims=null_dims),
                               trained_change("float32", null_dims=null_dims)):
        torch.testing.assert_close(factored, dense, atol=1e-5, rtol=1e-4)


def test_a_factored_projector_of_the_wrong_size_is_refused():
    w = nn.Parameter(torch.ones(6, 4))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=2, multi_subspace=False)
    with pytest.raises(ValueError, match="must be 6×6"):
        opt.set_null_projector(w, projector(4, 2, 0, factored=True), "output")
