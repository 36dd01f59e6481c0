"""PCGrad: no combined direction against a task, the joint gradient when tasks agree, one global dot product."""
import pytest
import torch

from baselines.pcgrad import PCGradFullFineTune, PCGradLoRA, pcgrad_combine
from gemsbench.methods.base import TaskGradients


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def split(v):
    return [v[:3].reshape(3), v[3:].reshape(2, 2)]


@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.5, 0.5), (0.1, 0.9)])
def test_conflicting_gradients_are_projected_so_no_task_is_hurt(weights):
    gen = torch.Generator().manual_seed(0)
    n_conflicts = 0
    for _ in range(50):
        rec, search = torch.randn(2, 7, generator=gen, dtype=torch.float64)
        combined, conflict = pcgrad_combine(split(rec), split(search), *weights)
        g = flat(combined)
        assert conflict == bool(rec @ search < 0)
        if conflict:
            n_conflicts += 1
            assert g @ rec >= -1e-12 and g @ search >= -1e-12
            # each projected task gradient is orthogonal to the other task's original gradient
            rec_p = rec - (rec @ search) / (search @ search) * search
            search_p = search - (search @ rec) / (rec @ rec) * rec
            torch.testing.assert_close(g, weights[0] * rec_p + weights[1] * search_p)
        else:
            torch.testing.assert_close(g, weights[0] * rec + weights[1] * search)
    assert 10 < n_conflicts < 40


def test_conflict_is_decided_over_all_parameters_together():
    rec = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0])]
    search = [torch.tensor([3.0, 1.0]), torch.tensor([1.0])]  # second parameter conflicts, the total does not
    combined, conflict = pcgrad_combine(rec, search, 0.5, 0.5)
    assert not conflict
    for c, r, s in zip(combined, rec, search):
        torch.testing.assert_close(c, 0.5 * r + 0.5 * s)


def task_grads(params, rec, search, n_rec, n_search):
    for p, r, s in zip(params, rec, search):  # the loop leaves the joint (token-weighted) gradient in p.grad
        p.grad = (n_rec * r + n_search * s) / (n_rec + n_search)
    return TaskGradients(params, rec, search, n_rec, n_search, 1.0, 1.0)


@pytest.mark.parametrize("cls", [PCGradFullFineTune, PCGradLoRA])
def test_optimizer_step_writes_the_combination_and_steps(cls):
    method = cls({"lr": 0.1})
    assert method.uses_task_gradients
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    rec, search = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])], [torch.tensor([-1.0, 1.0]), torch.tensor([0.0])]
    out = method.optimizer_step(opt, task_grads(params, rec, search, n_rec=3, n_search=1))
    assert out == {"pcgrad_conflict": 1}
    want, _ = pcgrad_combine(rec, search, 0.75, 0.25)  # default weighting: token shares
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w)
        torch.testing.assert_close(p.detach(), -w)


def test_equal_weighting_and_agreeing_tasks_give_the_mean():
    method = PCGradFullFineTune({"task_weighting": "equal"})
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=1.0)
    rec, search = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 0.0])]
    assert method.optimizer_step(opt, task_grads(params, rec, search, n_rec=9, n_search=1)) == {"pcgrad_conflict": 0}
    torch.testing.assert_close(params[0].grad, torch.tensor([2.0, 1.0]))


def test_a_step_with_one_task_keeps_the_joint_gradient():
    method = PCGradFullFineTune()
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=1.0)
    params[0].grad = torch.tensor([1.0, -1.0])
    assert method.optimizer_step(opt, TaskGradients(params, [params[0].grad.clone()], [None], 4, 0, 1.0, 0.0)) == {}
    torch.testing.assert_close(params[0].detach(), torch.tensor([-1.0, 1.0]))


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="task_weighting"):
        PCGradLoRA({"task_weighting": "sum"})
