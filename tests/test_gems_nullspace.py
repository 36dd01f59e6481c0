"""Null space: hook statistics over real tokens, the two rules, the optimizer's guarantees, the disk cache."""
import logging

import pytest
import torch
from torch import nn

import gems.nullspace
from gems import (MultiSubspaceAdamW, cached_second_moments, collect_second_moments, load_second_moments,
                  null_space_projector, save_second_moments, second_moment_key)


class OneLayer(nn.Module):
    """A model whose only layer is a targeted linear map; takes an attention mask like an LLM."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x, attention_mask=None):
        return self.q_proj(x)


def low_rank_features(n_batches: int, d_in: int, rank: int, seed: int = 0) -> list[torch.Tensor]:
    """Batches [4, 8, d_in] whose vectors all lie in one rank-``rank`` subspace."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(rank, d_in, generator=gen)
    return [torch.randn(4, 8, rank, generator=gen) @ mixing for _ in range(n_batches)]


@pytest.mark.parametrize("side", ["output", "input"])
def test_second_moments_count_only_real_tokens(side):
    model = OneLayer(6, 5)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        mask = (torch.rand(3, 7, generator=gen) > 0.3).long()
        x = torch.randn(3, 7, 6, generator=gen)
        x[mask == 0] = 100.0  # padding that would dominate K if it were counted
        batches.append({"x": x, "attention_mask": mask})
    K = collect_second_moments(model, {"q_proj": model.q_proj}, batches, side)["q_proj"]
    real = torch.cat([b["x"][b["attention_mask"].bool()] for b in batches])
    feats = model.q_proj(real).detach() if side == "output" else real
    torch.testing.assert_close(K, feats.T @ feats / len(feats))
    unmasked = collect_second_moments(model, {"q_proj": model.q_proj}, [b["x"] for b in batches], side)
    assert unmasked["q_proj"].max() > 10 * K.max()  # tensor batches have no mask: every position counts


def test_a_module_that_never_runs_is_an_error():
    model = OneLayer(4, 3)
    with pytest.raises(RuntimeError, match="saw no token"):
        collect_second_moments(model, {"other": nn.Linear(4, 3)}, [torch.randn(2, 4)])


def test_threshold_and_energy_rules_split_the_spectrum():
    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0))).Q
    eigenvalues = torch.tensor([5.0, 1.0, 0.5, 0.01, 0.001, 0.0])
    K = q @ torch.diag(eigenvalues) @ q.T
    null = q[:, 3:]
    P, info = null_space_projector(K, rule="threshold", tau=2e-2)
    assert (info.null_dim, info.total_dim, info.fallback_used) == (3, 6, False)
    assert info.eig_max == pytest.approx(5.0, rel=1e-5)
    torch.testing.assert_close(P, null @ null.T, atol=1e-5, rtol=0)
    # energy: 5 + 1 + 0.5 = 6.5 of 6.511 is >= 99 %, so three knowledge directions; 6 of 6.511 is >= 90 %
    assert null_space_projector(K, rule="energy", energy=0.99)[1].null_dim == 3
    assert null_space_projector(K, rule="energy", energy=0.90)[1].null_dim == 4


def test_empty_null_space_freezes_unless_a_fallback_is_asked(caplog):
    K = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    with caplog.at_level(logging.WARNING, logger="gems.nullspace"):
        P, info = null_space_projector(K, tau=2e-2)
    assert info.empty and torch.equal(P, torch.zeros(4, 4)) and "freezes" in caplog.text
    with caplog.at_level(logging.WARNING, logger="gems.nullspace"):
        P, info = null_space_projector(K, tau=2e-2, fallback_fraction=0.25)
    assert info.fallback_used and info.null_dim == 1 and "FALLING BACK" in caplog.text
    torch.testing.assert_close(P, torch.diag(torch.tensor([0.0, 0.0, 0.0, 1.0])), atol=1e-6, rtol=0)


def one_step_update(layer: nn.Linear, projector: torch.Tensor | None, side: str, **options) -> torch.Tensor:
    """ΔW of two multi-subspace steps on random gradients, with an optional null projector."""
    gen = torch.Generator().manual_seed(1)
    w = nn.Parameter(layer.weight.detach().clone())
    opt = MultiSubspaceAdamW([{"params": [w], "targeted": True}], lr=0.05, rank=6, **options)
    if projector is not None:
        opt.set_null_projector(w, projector, side)
    for _ in range(2):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.set_task_gradients({w: torch.randn(w.shape, generator=gen)}, {w: torch.randn(w.shape, generator=gen)},
                               n_rec=3, n_search=5, loss_rec=1.0, loss_search=2.0)
        opt.step()
    return (w - layer.weight).detach()


@pytest.mark.parametrize("low_rank", [False, True], ids=["dense-P", "factored-P"])
@pytest.mark.parametrize(("d_in", "d_out"), [(16, 12), (12, 20)])  # left- and right-side projection
def test_input_side_projection_leaves_outputs_on_knowledge_features_unchanged(d_in, d_out, low_rank):
    model = OneLayer(d_in, d_out)
    batches = low_rank_features(2, d_in, rank=4)
    K = collect_second_moments(model, {"q_proj": model.q_proj}, batches, side="input")["q_proj"]
    P, info = null_space_projector(K, tau=2e-2, low_rank=low_rank)
    assert info.null_dim == d_in - 4
    x = torch.cat(batches).reshape(-1, d_in)
    outputs = x @ model.q_proj.weight.detach().T

    def relative_change(delta):
        return float((x @ delta.T).norm() / outputs.norm())

    assert relative_change(one_step_update(model.q_proj, P, "input")) < 1e-5
    assert relative_change(one_step_update(model.q_proj, None, "input")) > 1e-2


def test_projecting_only_gradients_leaks_through_adam_normalisation():
    model = OneLayer(16, 12)  # left side: Adam normalises across input coordinates
    batches = low_rank_features(2, 16, rank=4)
    K = collect_second_moments(model, {"q_proj": model.q_proj}, batches, side="input")["q_proj"]
    P, _ = null_space_projector(K, tau=2e-2)
    x = torch.cat(batches).reshape(-1, 16)
    delta = one_step_update(model.q_proj, P, "input", null_project_update=False)
    assert float((x @ delta.T).norm() / (x @ model.q_proj.weight.detach().T).norm()) > 1e-3


@pytest.mark.parametrize("low_rank", [False, True], ids=["dense-P", "factored-P"])
@pytest.mark.parametrize(("d_in", "d_out"), [(16, 12), (12, 20)])
def test_output_side_update_has_no_component_in_knowledge_output_directions(d_in, d_out, low_rank):
    model = OneLayer(d_in, d_out)
    batches = low_rank_features(2, d_in, rank=3)
    K = collect_second_moments(model, {"q_proj": model.q_proj}, batches, side="output")["q_proj"]
    P, info = null_space_projector(K, tau=2e-2, low_rank=low_rank)
    assert info.null_dim == d_out - 3
    knowledge = torch.linalg.eigh(K).eigenvectors[:, -3:]
    projected = one_step_update(model.q_proj, P, "output")
    assert float((knowledge.T @ projected).norm() / projected.norm()) < 1e-5
    free = one_step_update(model.q_proj, None, "output")
    assert float((knowledge.T @ free).norm() / free.norm()) > 0.1


def test_cache_keys_round_trip_and_atomic_writes(tmp_path, monkeypatch):
    key = second_moment_key("HuggingFaceTB/SmolLM2-135M", "model.layers.0.self_attn.q_proj", "wiki", 1000, "input")
    assert key != second_moment_key("HuggingFaceTB/SmolLM2-135M", "model.layers.0.self_attn.q_proj", "wiki", 1000,
                                    "output")
    path = tmp_path / "K.safetensors"
    moments = {key: torch.randn(5, 5)}
    save_second_moments(path, moments)
    assert torch.equal(load_second_moments(path)[key], moments[key])

    def crash(tensors, filename):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(gems.nullspace, "save_file", crash)
    with pytest.raises(OSError):
        save_second_moments(path, {key: torch.zeros(5, 5)})
    assert torch.equal(load_second_moments(path)[key], moments[key])  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["K.safetensors"]  # no temp file left
    with pytest.raises(ValueError, match="'::'"):
        second_moment_key("a::b", "layer", "wiki", 1, "input")
    with pytest.raises(ValueError, match="side='both'"):
        second_moment_key("a", "layer", "wiki", 1, "both")


def test_cached_second_moments_collects_once_per_key(tmp_path):
    model = OneLayer(6, 5)
    modules = {"q_proj": model.q_proj}
    calls = []

    def batches():
        calls.append(1)
        return low_rank_features(1, 6, rank=2)

    path = tmp_path / "K.safetensors"
    common = dict(backbone="toy", corpus="rand", side="input")
    first = cached_second_moments(path, model, modules, batches, n_samples=4, **common)
    again = cached_second_moments(path, model, modules, batches, n_samples=4, **common)
    assert len(calls) == 1 and torch.equal(first["q_proj"], again["q_proj"])
    cached_second_moments(path, model, modules, batches, n_samples=8, **common)
    assert len(calls) == 2 and len(load_second_moments(path)) == 2  # merged, not overwritten
