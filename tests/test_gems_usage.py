"""The package docstring's loop: two task backward passes give the joint token-mean gradient exactly."""
import torch
import transformers

from gems import MultiSubspaceAdamW, build_param_groups


def test_two_task_backward_passes_give_the_joint_gradient_and_a_step_runs():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100))
    input_ids = torch.randint(0, 100, (4, 6))
    labels = torch.full_like(input_ids, -100)
    labels[0, 5] = labels[1, 5] = labels[2, 5] = labels[2, 4] = labels[3, 3] = 7  # 2 rec and 3 search targets
    batch = {"input_ids": input_ids, "labels": labels}
    params = [p for p in model.parameters()]
    model(**batch).loss.backward()
    whole = {p: p.grad.clone() for p in params}

    opt = MultiSubspaceAdamW(build_param_groups(model, rank=8, update_gap=5), lr=1e-3)
    task_grads, counts, losses = {}, {}, {}
    for task, rows in (("rec", slice(0, 2)), ("search", slice(2, 4))):
        opt.zero_grad()
        loss = model(**{k: v[rows] for k, v in batch.items()}).loss
        loss.backward()
        task_grads[task] = {p: p.grad.clone() for p in params if p.grad is not None}
        counts[task] = int((batch["labels"][rows] != -100).sum())
        losses[task] = loss.item()
    for p in params:
        p.grad = sum(counts[t] * task_grads[t][p] for t in task_grads) / (counts["rec"] + counts["search"])
        torch.testing.assert_close(p.grad, whole[p], atol=1e-6, rtol=1e-4)
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    opt.set_task_gradients(task_grads["rec"], task_grads["search"], counts["rec"], counts["search"],
                           losses["rec"], losses["search"])
    opt.step()
    assert opt.last_stats["refreshes"] == 3 * 14
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
