"""HydraLoRA: one head is LoRA, the output is the router-weighted mix of B heads, it starts as the base."""
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from baselines.hydra_lora import HydraLoRALinear, HydraLoRAMethod, inject_hydra_lora
from gemsbench.backbone import add_item_tokens, load_backbone


def test_one_head_is_plain_lora():
    """peft's LoRA layer is the reference: same A, B, alpha / r scaling; the router is moot with one head."""
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    peft_host = nn.Module()
    peft_host.proj = nn.Linear(8, 6)
    peft_host.proj.load_state_dict(base.state_dict())
    peft_host = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]), peft_host)
    hydra = HydraLoRALinear(base, heads=1, rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        peft_host.proj.lora_B["default"].weight.normal_()
        hydra.lora_A.copy_(peft_host.proj.lora_A["default"].weight)
        hydra.lora_B.copy_(peft_host.proj.lora_B["default"].weight[None])
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(hydra(x), peft_host.proj(x), rtol=0, atol=1e-6)


def test_output_is_the_router_weighted_mix_of_heads():
    torch.manual_seed(0)
    layer = HydraLoRALinear(nn.Linear(8, 6), heads=3, rank=2, alpha=4, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 8)
    pi = layer.router_weights(x)
    torch.testing.assert_close(pi.sum(-1), torch.ones(2, 4))
    assert (pi.std(dim=(0, 1)) > 0).all()  # the weights vary from token to token
    want = torch.empty(2, 4, 6)
    for b in range(2):
        for t in range(4):
            delta = sum(pi[b, t, h] * layer.lora_B[h] @ layer.lora_A for h in range(3)) * layer.scaling
            want[b, t] = layer.base(x[b, t]) + delta @ x[b, t]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_t5"])
def test_wrapped_model_starts_as_the_base_and_learns(kind):
    torch.manual_seed(0)
    bb = load_backbone({"source": kind})
    item_ids = add_item_tokens(bb, ["a", "b", "c"], "random")
    model = bb.model.eval()
    ids = torch.tensor([[5, 6, item_ids[0], 7], [8, item_ids[1], 9, 10]])
    kw = {"decoder_input_ids": ids[:, :2]} if kind == "tiny_t5" else {}
    base = model(input_ids=ids, **kw).logits.detach()
    method = HydraLoRAMethod({"dropout": 0.0, "lr": 5e-3})
    model = method.prepare_model(model, item_ids)
    torch.testing.assert_close(model(input_ids=ids, **kw).logits, base, rtol=1e-6, atol=1e-5)
    opt = method.build_optimizer(model, total_steps=5)
    target = torch.tensor(item_ids[2])
    losses = []
    for _ in range(5):
        loss = -model(input_ids=ids, **kw).logits[:, -1].log_softmax(-1)[:, target].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    routers = [m.router.weight for m in model.modules() if isinstance(m, HydraLoRALinear)]
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in routers)


def test_inject_wraps_only_the_targets():
    model = load_backbone({"source": "tiny_llama"}).model
    names = inject_hydra_lora(model, ["down_proj"], heads=2, rank=2)
    assert len(names) == 2 and sum(isinstance(m, HydraLoRALinear) for m in model.modules()) == 2
