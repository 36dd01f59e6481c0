"""MoE-LoRA: reduces to LoRA, mixes experts by task gates, merges exactly, starts as the base, learns gates."""
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from baselines.moe_lora import (MoELoRALinear, MoELoRAMethod, inject_moe_lora, merge_moe_lora, set_task_routing,
                                unmerge_moe_lora)
from gemsbench.backbone import add_item_tokens, load_backbone


def randomised(layer: MoELoRALinear, seed=0) -> MoELoRALinear:
    """Non-zero B and distinct task gates, so that the adapter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
        layer.gate.weight.copy_(torch.randn(layer.gate.weight.shape, generator=g))
    return layer.eval()


def test_one_expert_is_plain_lora():
    """peft's LoRA layer is the reference: same A, B, alpha / r scaling."""
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    peft_host = nn.Module()
    peft_host.proj = nn.Linear(8, 6)
    peft_host.proj.load_state_dict(base.state_dict())
    peft_host = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]), peft_host)
    moe = MoELoRALinear(base, experts=1, rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        peft_host.proj.lora_B["default"].weight.normal_()
        moe.lora_A.copy_(peft_host.proj.lora_A["default"].weight[None])
        moe.lora_B.copy_(peft_host.proj.lora_B["default"].weight[None])
    x = torch.randn(3, 5, 8)
    set_task_routing(moe, example_task=torch.tensor([0, 1, 1]))
    torch.testing.assert_close(moe(x), peft_host.proj(x), rtol=0, atol=1e-6)


def test_output_is_the_task_gated_mixture_per_token_or_per_example():
    layer = randomised(MoELoRALinear(nn.Linear(8, 6), experts=3, rank=2, alpha=4, dropout=0.0))
    x = torch.randn(2, 4, 8)
    token_task = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    set_task_routing(layer, token_task=token_task, example_task=torch.tensor([1, 0]))
    gates = layer.gate_weights()
    assert torch.allclose(gates.sum(-1), torch.ones(2)) and not torch.allclose(gates[0], gates[1])
    want = torch.empty(2, 4, 6)
    for b in range(2):
        for t in range(4):
            g = gates[token_task[b, t]]
            delta = sum(g[e] * layer.lora_B[e] @ layer.lora_A[e] for e in range(3)) * layer.scaling
            want[b, t] = layer.base(x[b, t]) + delta @ x[b, t]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        # a shorter input (T5's decoder) falls back to the per-example ids
        short = x[:, :1]
        per_example = torch.stack([layer.base(short[b]) + short[b] @ layer.delta_weight(t).t()
                                   for b, t in enumerate([1, 0])])
        torch.testing.assert_close(layer(short), per_example, rtol=1e-5, atol=1e-5)


def test_mixed_task_rows_need_per_token_ids():
    layer = MoELoRALinear(nn.Linear(8, 6))
    set_task_routing(layer, token_task=torch.zeros(2, 4, dtype=torch.long), example_task=torch.tensor([0, -1]))
    layer(torch.randn(2, 4, 8))  # per-token routing: fine
    with pytest.raises(ValueError, match="mixes both tasks"):
        layer(torch.randn(2, 1, 8))
    with pytest.raises(ValueError, match="fits none"):
        layer(torch.randn(3, 4, 8))


def backbone(kind):
    bb = load_backbone({"source": kind})
    ids = add_item_tokens(bb, ["a", "b", "c"], "random")
    return bb.model, ids


def logits(model, ids, is_t5):
    kw = {"decoder_input_ids": ids[:, :2]} if is_t5 else {}
    return model(input_ids=ids, **kw).logits


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_t5"])
def test_wrapped_model_starts_as_the_base_and_merges_exactly(kind):
    model, item_ids = backbone(kind)
    model.eval()
    ids = torch.tensor([[5, 6, item_ids[0], 7], [8, item_ids[1], 9, 10]])
    base = logits(model, ids, kind == "tiny_t5").detach()
    method = MoELoRAMethod({"dropout": 0.0})
    model = method.prepare_model(model, item_ids)
    batch = {"token_task": torch.tensor([[0] * 4, [1] * 4]), "example_task": torch.tensor([0, 1])}
    method.before_forward(model, batch)
    # equal up to GEMM rounding (the item-row parametrization hands the head a fresh, non-leaf matrix)
    torch.testing.assert_close(logits(model, ids, kind == "tiny_t5"), base, rtol=1e-6, atol=1e-5)

    layers = [m for m in model.modules() if isinstance(m, MoELoRALinear)]
    for i, layer in enumerate(layers):
        randomised(layer, seed=i)
    weights = [layer.base.weight.detach().clone() for layer in layers]
    set_task_routing(model, token_task=torch.ones_like(ids), example_task=torch.ones(2, dtype=torch.long))
    routed = logits(model, ids, kind == "tiny_t5").detach()
    assert not torch.allclose(routed, base, atol=1e-3)
    merge_moe_lora(model, task=1)
    set_task_routing(model, token_task=torch.zeros_like(ids), example_task=torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(logits(model, ids, kind == "tiny_t5").detach(), routed, rtol=1e-4, atol=1e-4)
    unmerge_moe_lora(model)
    for layer, w in zip(layers, weights):
        torch.testing.assert_close(layer.base.weight, w, rtol=0, atol=1e-6)


def test_prepared_model_trains_adapters_gates_and_item_rows_only():
    model, item_ids = backbone("tiny_llama")
    n_targets = sum(isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1].endswith("proj")
                    for n, m in model.named_modules())
    model = MoELoRAMethod().prepare_model(model, item_ids)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    kinds = {n.rsplit(".", 1)[-1] for n in names}
    assert kinds == {"lora_A", "lora_B", "weight", "rows"}  # ".weight": gate and task embedding
    assert all(".gate." in n or ".task_embedding." in n for n in names if n.endswith(".weight"))
    assert sum(n.endswith("lora_A") for n in names) == n_targets == 7 * 2


def test_gates_of_the_two_tasks_separate_on_a_two_task_problem():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(6, 6), experts=2, rank=2, alpha=2, dropout=0.0)
    layer.base.requires_grad_(False)
    targets = [torch.randn(6, 2) @ torch.randn(2, 6) * 0.5 for _ in range(2)]  # each task: its own rank-2 update
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    start = layer.gate_weights().detach()
    assert torch.allclose(start[0], start[1])  # zero-initialised gate: uniform for both tasks
    for _ in range(150):
        x = torch.randn(32, 6)
        task = torch.randint(0, 2, (32,))
        want = layer.base(x) + torch.stack([x[i] @ targets[t].t() for i, t in enumerate(task.tolist())])
        set_task_routing(layer, example_task=task)
        loss = (layer(x) - want).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gates = layer.gate_weights().detach()
    assert (gates[0] - gates[1]).abs().max() > 0.2
    assert loss.item() < 0.05


def test_inject_wraps_only_the_targets():
    model, _ = backbone("tiny_llama")
    names = inject_moe_lora(model, ["q_proj", "v_proj"], experts=2, rank=2)
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)
    assert sum(isinstance(m, MoELoRALinear) for m in model.modules()) == 4
