"""MultiSubspaceAdamW: equivalence with AdamW, fusion by hand, refresh schedule, complement bases, moment
policies, degenerate gradients and the task-gradient protocol."""
import pytest
import torch
from torch import nn

from gems import GateConfig, MultiSubspaceAdamW, compute_basis, project, project_back, projection_side


def gaussian(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def step_with(opt, w, joint, rec=None, search=None, n=(4, 4)):
    w.grad = joint.clone()
    if rec is not None or search is not None:
        opt.set_task_gradients({w: rec}, {w: search}, n_rec=n[0], n_search=n[1], loss_rec=1.0, loss_search=1.0)
    opt.step()


@pytest.mark.parametrize("shape", [(10, 6), (6, 10)])
def test_full_rank_single_subspace_matches_torch_adamw(shape):
    # Adam is element-wise, so it commutes with the projection only when the basis is a signed permutation:
    # the first gradient has orthogonal columns (rows) of distinct norms, and the basis is then kept.
    w = nn.Parameter(gaussian(shape, 0))
    b = nn.Parameter(gaussian(shape[:1], 1))
    w_ref, b_ref = nn.Parameter(w.detach().clone()), nn.Parameter(b.detach().clone())
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}, {"params": [b]}], lr=1e-2, weight_decay=0.1,
                             rank=min(shape), update_gap=1000, scale=1.0, multi_subspace=False)
    ref = torch.optim.AdamW([w_ref, b_ref], lr=1e-2, weight_decay=0.1)
    orthogonal = torch.linalg.qr(gaussian((max(shape), min(shape)), 2)).Q * torch.arange(min(shape), 0, -1)
    grads = [orthogonal if shape[0] >= shape[1] else orthogonal.T] + [gaussian(shape, 10 + i) for i in range(4)]
    for i, g in enumerate(grads):
        w.grad, w_ref.grad = g.clone(), g.clone()
        b.grad = b_ref.grad = gaussian(shape[:1], 20 + i)
        opt.step()
        ref.step()
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b, b_ref, atol=1e-6, rtol=1e-5)


def test_full_rank_fixed_basis_is_adamw_in_rotated_coordinates():
    w = nn.Parameter(gaussian((10, 6), 0))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], lr=1e-2, weight_decay=0.1, rank=6,
                             update_gap=1000, multi_subspace=False)
    grads = [gaussian((10, 6), 10 + i) for i in range(5)]
    basis = compute_basis(grads[0], 6, "right")
    rotated = nn.Parameter(w.detach() @ basis)
    ref = torch.optim.AdamW([rotated], lr=1e-2, weight_decay=0.1)
    for g in grads:
        step_with(opt, w, g)
        rotated.grad = g @ basis
        ref.step()
    torch.testing.assert_close(w.detach() @ basis, rotated.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_first_step_fuses_three_adam_updates_with_the_gates(shape):
    w = nn.Parameter(gaussian(shape, 0))
    start = w.detach().clone()
    lr, eps, scale = 0.1, 1e-8, 0.5
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], lr=lr, eps=eps, rank=4, task_rank=2,
                             scale=scale, gating=GateConfig(mode="fixed", rec_weight=0.3))
    joint, rec, search = (gaussian(shape, s) for s in (1, 2, 3))
    step_with(opt, w, joint, rec, search)
    side = projection_side(shape)

    def first_adam_update(grad, rank):  # after one step m̂ = R and v̂ = R², so the direction is R / (|R| + eps)
        basis = compute_basis(grad, rank, side)
        low = project(grad, basis, side)
        return scale * project_back(low / (low.abs() + eps), basis, side)

    update = first_adam_update(joint, 4) + 0.3 * first_adam_update(rec, 2) + 0.7 * first_adam_update(search, 2)
    torch.testing.assert_close(w.detach(), start - lr * update, atol=1e-6, rtol=1e-5)
    assert (opt.last_stats["gate_rec"], opt.last_stats["gate_search"]) == pytest.approx((0.3, 0.7))


def test_bases_refresh_exactly_every_update_gap_steps():
    w = nn.Parameter(gaussian((9, 7), 0))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], lr=1e-3, rank=4, update_gap=3)
    refreshes, changed, previous = [], [], None
    for i in range(8):
        step_with(opt, w, gaussian((9, 7), 3 * i), gaussian((9, 7), 3 * i + 1), gaussian((9, 7), 3 * i + 2))
        refreshes.append(opt.last_stats["refreshes"])
        bases = [opt.state[w][name]["basis"].clone() for name in ("shared", "rec", "search")]
        changed.append(previous is not None and not any(torch.equal(a, b) for a, b in zip(bases, previous)))
        previous = bases
    assert refreshes == [3, 0, 0, 3, 0, 0, 3, 0]
    assert changed == [False, False, False, True, False, False, True, False]
    assert opt.last_stats["refreshes_total"] == 9 and opt.last_stats["svd_seconds_total"] > 0


@pytest.mark.parametrize("shape", [(20, 12), (12, 20)])
@pytest.mark.parametrize("task_basis", ["complement", "raw"])
def test_complement_task_bases_are_orthogonal_to_the_shared_basis(shape, task_basis):
    w = nn.Parameter(gaussian(shape, 0))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=4, task_rank=3, update_gap=1,
                             task_basis=task_basis)
    for i in range(2):
        joint = gaussian(shape, 10 * i)
        # each task gradient shares the joint gradient's leading directions; the rank-1 search gradient makes
        # the complement SVD rank-deficient
        rec = joint + 0.1 * gaussian(shape, 10 * i + 1)
        search = 0.5 * joint + torch.outer(gaussian(shape[:1], 10 * i + 2), gaussian(shape[1:], 10 * i + 3))
        step_with(opt, w, joint, rec, search)
        shared = opt.state[w]["shared"]["basis"]
        for task in ("rec", "search"):
            basis = opt.state[w][task]["basis"]
            torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
            overlap = (basis.T @ shared).abs().max()
            assert overlap < 1e-5 if task_basis == "complement" else overlap > 1e-2


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
@pytest.mark.parametrize("policy", ["keep", "reset", "reproject"])
def test_moment_policy_on_refresh(policy, shape):
    w = nn.Parameter(gaussian(shape, 0))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=3, update_gap=2, moment_policy=policy,
                             multi_subspace=False)
    step_with(opt, w, gaussian(shape, 1))
    step_with(opt, w, gaussian(shape, 2))
    old = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[w]["shared"].items()}
    g = gaussian(shape, 3)
    step_with(opt, w, g)  # step 2 refreshes the basis
    side = projection_side(shape)
    new_basis = compute_basis(g, 3, side)
    change = old["basis"].T @ new_basis
    carried = {
        "keep": (old["exp_avg"], old["exp_avg_sq"], 2),
        "reset": (torch.zeros_like(old["exp_avg"]), torch.zeros_like(old["exp_avg"]), 0),
        "reproject": ((old["exp_avg"] @ change, old["exp_avg_sq"] @ change.square(), 2) if side == "right" else
                      (change.T @ old["exp_avg"], change.square().T @ old["exp_avg_sq"], 2)),
    }[policy]
    low = project(g, new_basis, side)
    sub = opt.state[w]["shared"]
    torch.testing.assert_close(sub["basis"], new_basis)
    torch.testing.assert_close(sub["exp_avg"], 0.9 * carried[0] + 0.1 * low, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sub["exp_avg_sq"], 0.999 * carried[1] + 0.001 * low.square(), atol=1e-7, rtol=1e-5)
    assert sub["step"] == carried[2] + 1


def test_reproject_keeps_the_full_space_first_moment_when_the_span_is_unchanged():
    old_basis = torch.linalg.qr(gaussian((8, 3), 0)).Q
    rotation = torch.linalg.qr(gaussian((3, 3), 1)).Q
    sub = {"basis": old_basis, "step": 5, "exp_avg": gaussian((12, 3), 2), "exp_avg_sq": gaussian((12, 3), 3).abs()}
    full_before = sub["exp_avg"] @ old_basis.T
    new = MultiSubspaceAdamW._install_basis(dict(sub), old_basis @ rotation, torch.Size((12, 8)), "right",
                                            "reproject")
    torch.testing.assert_close(new["exp_avg"] @ new["basis"].T, full_before, atol=1e-5, rtol=0)
    assert (new["exp_avg_sq"] >= 0).all()


def test_zero_and_nonfinite_gradients_keep_the_basis_and_do_not_crash():
    w = nn.Parameter(gaussian((6, 4), 0))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=2, update_gap=2, multi_subspace=False)
    before = w.detach().clone()
    step_with(opt, w, torch.zeros(6, 4))  # step 0: no basis yet, so the subspace defers
    assert "shared" not in opt.state[w] and torch.equal(w.detach(), before)
    assert (opt.last_stats["skipped_refreshes"], opt.last_stats["deferred"]) == (1, 1)
    step_with(opt, w, gaussian((6, 4), 1))  # step 1: first usable gradient creates the basis off-schedule
    assert opt.last_stats["refreshes"] == 1
    basis = opt.state[w]["shared"]["basis"].clone()
    step_with(opt, w, torch.zeros(6, 4))  # step 2: refresh due, zero gradient keeps the basis
    assert opt.last_stats["skipped_refreshes"] == 1 and torch.equal(opt.state[w]["shared"]["basis"], basis)
    for bad in (float("nan"), float("inf")):  # steps 3 and 4 (refresh due): nothing moves, nothing poisoned
        weights, moments = w.detach().clone(), opt.state[w]["shared"]["exp_avg"].clone()
        g = gaussian((6, 4), 2)
        g[1, 1] = bad
        step_with(opt, w, g)
        assert opt.last_stats["nonfinite_skips"] == 1
        assert torch.equal(w.detach(), weights) and torch.equal(opt.state[w]["shared"]["exp_avg"], moments)
        assert torch.equal(opt.state[w]["shared"]["basis"], basis)
    assert opt.last_stats["skipped_refreshes_total"] == 3


def test_task_gradient_protocol():
    w = nn.Parameter(gaussian((6, 4), 0))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=2)
    w.grad = gaussian((6, 4), 1)
    with pytest.raises(RuntimeError, match="set_task_gradients"):
        opt.step()
    with pytest.raises(ValueError, match=r"shape \(4, 6\) for a parameter of shape \(6, 4\)"):
        opt.set_task_gradients({w: torch.zeros(4, 6)}, {}, 1, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="not in this optimizer"):
        opt.set_task_gradients({nn.Parameter(torch.zeros(6, 4)): torch.zeros(6, 4)}, {}, 1, 1, 1.0, 1.0)
    step_with(opt, w, gaussian((6, 4), 1), gaussian((6, 4), 2), None, n=(3, 0))  # no search example
    assert "search" not in opt.state[w] and "rec" in opt.state[w]
    assert (opt.last_stats["gate_rec"], opt.last_stats["gate_search"]) == (1.0, 0.0)
    with pytest.raises(RuntimeError, match="set_task_gradients"):  # consumed by the previous step
        opt.step()


def test_invalid_groups_name_the_value_and_the_fix():
    w = nn.Parameter(torch.zeros(6, 4))
    with pytest.raises(ValueError, match="svd='lanczos'"):
        MultiSubspaceAdamW([{"params": [w], "targeted": True, "svd": "lanczos"}])
    with pytest.raises(ValueError, match="rank=4 fills the whole"):
        MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=4, task_basis="complement")
    with pytest.raises(ValueError, match=r"2-D weight, got shape \(6,\)"):
        MultiSubspaceAdamW([{"params": [nn.Parameter(torch.zeros(6))], "targeted": True}])
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=2)
    with pytest.raises(ValueError, match=r"must be 6×6, got \(4, 4\)"):
        opt.set_null_projector(w, torch.eye(4), "output")


def test_projected_cosines_are_recorded_on_request():
    w = nn.Parameter(gaussian((9, 7), 0))
    g = gaussian((9, 7), 1)
    quiet = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=3)
    step_with(quiet, w, g, g, -g)
    assert not any(key.startswith("cos_") for key in quiet.last_stats)
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=3, record_projected_cosines=True)
    step_with(opt, w, gaussian((9, 7), 2), g, -g)
    assert opt.last_stats["cos_full"] == pytest.approx(-1.0)
    assert opt.last_stats["cos_shared"] == pytest.approx(-1.0)
    assert opt.last_stats["cos_task"] == pytest.approx(-1.0)
    step_with(opt, w, gaussian((9, 7), 3), g, gaussian((9, 7), 4))
    assert -0.9 < opt.last_stats["cos_full"] < 0.9


def test_heuristic_gates_use_the_global_norm_of_the_task_gradients():
    w, b = nn.Parameter(torch.zeros(6, 4)), nn.Parameter(torch.zeros(6))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}, {"params": [b]}], rank=2)
    rec_w, rec_b, search_w = torch.zeros(6, 4), torch.zeros(6), torch.zeros(6, 4)
    rec_w[0, 0], rec_b[0], search_w[0, 0] = 3.0, 4.0, 15.0  # norms: rec 5 (over w and b), search 15
    opt.set_task_gradients({w: rec_w, b: rec_b}, {w: search_w, b: None}, n_rec=1, n_search=3, loss_rec=3.0,
                           loss_search=1.0)
    w.grad, b.grad = (rec_w + 3 * search_w) / 4, rec_b / 4
    opt.step()
    # 0.4 * 3/4 (loss) + 0.4 * 5/20 (grad norm) + 0.2 * 1/4 (count)
    assert opt.last_stats["gate_rec"] == pytest.approx(0.45)
    assert opt.last_stats["gate_search"] == pytest.approx(0.55)


def test_a_joint_gradient_derived_from_the_task_gradients_gives_the_same_steps():
    """derive_joint=True with p.grad None: the same update as p.grad = the count-weighted mean of the task
    gradients, for steps with both tasks and with one absent; a non-targeted weight still needs its p.grad."""
    def run(derive: bool) -> list[torch.Tensor]:
        w = nn.Parameter(gaussian((12, 8), 0))
        b = nn.Parameter(gaussian((8,), 1))
        opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}, {"params": [b], "targeted": False}], lr=1e-2,
                                 rank=4, task_rank=2, update_gap=2)
        out = []
        for step, n in enumerate([(3, 5), (4, 0), (2, 6)]):
            rec, search = gaussian((12, 8), 10 + step), gaussian((12, 8), 20 + step)
            given_search = {w: search} if n[1] else {}
            w.grad = None if derive else torch.lerp(rec, search, n[1] / sum(n)) if n[1] else rec.clone()
            b.grad = gaussian((8,), 30 + step)
            opt.set_task_gradients({w: rec}, given_search, n[0], n[1], 1.0, 2.0, derive_joint=derive)
            opt.step()
            out.append(w.detach().clone())
        return out + [b.detach().clone()]

    for got, want in zip(run(True), run(False)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
