"""Optimizer state: plain tensors (weights_only loading), device and dtype on load, bitwise-exact resume."""
import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from gems import MultiSubspaceAdamW, build_param_groups

CONFIGS = {
    "release": dict(),
    "ours": dict(moment_policy="reproject", svd="randomized", task_basis="complement"),
}


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(q_proj=nn.Linear(8, 12), act=nn.Tanh(), o_proj=nn.Linear(12, 6))).to(dtype)


def make_optimizer(model: nn.Module, **options) -> MultiSubspaceAdamW:
    groups = build_param_groups(model, rank=3, update_gap=2, **options)
    opt = MultiSubspaceAdamW(groups, lr=1e-2, weight_decay=0.01, record_projected_cosines=True)
    opt.set_null_projector(model.q_proj.weight, null_projector(), side="input")
    return opt


def null_projector() -> torch.Tensor:
    u = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(9))).Q
    return u @ u.T


def train_step(model: nn.Module, opt: MultiSubspaceAdamW, step: int) -> None:
    """Two task backward passes on data fixed by ``step``; the joint gradient is their count-weighted mean."""
    gen = torch.Generator().manual_seed(step)
    params = [p for p in model.parameters()]
    grads, counts = {}, {"rec": 3, "search": 5}
    for task, n in counts.items():
        x, y = torch.randn(n, 8, generator=gen), torch.randn(n, 6, generator=gen)
        opt.zero_grad()
        (model(x.to(params[0].dtype)) - y.to(params[0].dtype)).pow(2).mean().backward()
        grads[task] = {p: p.grad.clone() for p in params}
    for p in params:
        p.grad = (3 * grads["rec"][p] + 5 * grads["search"][p]) / 8
    opt.set_task_gradients(grads["rec"], grads["search"], 3, 5, loss_rec=1.0 + step, loss_search=2.0)
    opt.step()


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_resume_from_a_saved_state_is_bitwise_identical(tmp_path, config):
    model = tiny_model()
    opt = make_optimizer(model, **config)
    for step in range(7):
        if step == 3:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
        train_step(model, opt, step)

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = tiny_model(seed=1)
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_optimizer(resumed, **config)  # reattaches the null projector
    resumed_opt.load_state_dict(saved["opt"])
    for step in range(3, 7):
        train_step(resumed, resumed_opt, step)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_load_moves_state_to_the_parameter_device_and_keeps_dtypes():
    model = tiny_model(dtype=torch.bfloat16)
    opt = make_optimizer(model)
    for step in range(2):
        train_step(model, opt, step)
    on_meta = copy.deepcopy(model).to("meta")
    meta_opt = make_optimizer_without_projector(on_meta)
    meta_opt.load_state_dict(opt.state_dict())
    tensors = [(p, t) for p in on_meta.parameters() for t in flatten(meta_opt.state[p])]
    assert tensors and all(t.device.type == "meta" for _, t in tensors)
    bases = [s["shared"]["basis"] for s in meta_opt.state.values() if "shared" in s]
    assert bases and all(b.dtype == torch.float32 for b in bases)  # torch would cast them to bfloat16
    assert meta_opt.state[on_meta.q_proj.bias]["exp_avg"].dtype == torch.bfloat16


def make_optimizer_without_projector(model: nn.Module) -> MultiSubspaceAdamW:
    return MultiSubspaceAdamW(build_param_groups(model, rank=3, update_gap=2), lr=1e-2)


def flatten(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from flatten(v)


def test_loaded_state_is_a_copy_and_a_missing_null_projector_is_an_error():
    model = tiny_model()
    opt = make_optimizer(model)
    train_step(model, opt, 0)
    other = copy.deepcopy(model)
    other_opt = make_optimizer_without_projector(other)
    other_opt.load_state_dict(opt.state_dict())
    with pytest.raises(RuntimeError, match="reattach it with set_null_projector"):
        train_step(other, other_opt, 1)
    other_opt.set_null_projector(other.q_proj.weight, null_projector(), side="input")
    moments = opt.state[model.o_proj.weight]["shared"]["exp_avg"].clone()
    train_step(other, other_opt, 1)
    assert torch.equal(opt.state[model.o_proj.weight]["shared"]["exp_avg"], moments)  # not shared with `other`


def test_optimizer_state_size_counts_the_subspace_bases_and_moments():
    from gemsbench.train import optimizer_state_bytes

    w = torch.nn.Parameter(torch.randn(12, 8))
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], rank=4, task_rank=2)
    w.grad = torch.randn(12, 8)
    opt.set_task_gradients({w: torch.randn(12, 8)}, {w: torch.randn(12, 8)}, 1, 1, 1.0, 1.0)
    opt.step()
    # right-side bases (8×r) and moments (12×r) of the shared (r 4) and two task (r 2) subspaces, float32
    expected = sum(4 * (8 * r + 2 * 12 * r) for r in (4, 2, 2))
    assert optimizer_state_bytes(opt) == expected


def test_optimizer_state_size_counts_null_projectors_and_each_storage_once():
    """Memory accounting (the efficiency table, bench_gems) counts what GEMS holds outside ``state`` too: an
    attached null projector (here a dense 8×8 one over the input features) and a basis folded with it, while a
    projector attached to two weights is one storage."""
    from gemsbench.train import optimizer_state_bytes

    w, v = torch.nn.Parameter(torch.randn(12, 8)), torch.nn.Parameter(torch.randn(12, 8))
    opt = MultiSubspaceAdamW([{"params": [w, v], "targeted": True}], rank=4, task_rank=2)
    for p in (w, v):
        p.grad = torch.randn(12, 8)
    opt.set_task_gradients({p: torch.randn(12, 8) for p in (w, v)}, {p: torch.randn(12, 8) for p in (w, v)},
                           1, 1, 1.0, 1.0)
    opt.step()
    plain = optimizer_state_bytes(opt)
    assert plain == 2 * sum(4 * (8 * r + 2 * 12 * r) for r in (4, 2, 2))
    projector = null_projector()
    for p in (w, v):
        opt.set_null_projector(p, projector, side="input")  # folds into the right-side (8×r) bases
        p.grad = torch.randn(12, 8)
    opt.set_task_gradients({p: torch.randn(12, 8) for p in (w, v)}, {p: torch.randn(12, 8) for p in (w, v)},
                           1, 1, 1.0, 1.0)
    opt.step()
    folded = 2 * sum(4 * 8 * r for r in (4, 2, 2))
    assert optimizer_state_bytes(opt) == plain + 4 * 8 * 8 + folded
