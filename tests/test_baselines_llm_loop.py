"""The LLM baselines inside the shared training loop: they train, log, save and score end to end."""
import json

import pytest
import torch

from baselines.hydra_lora import HydraLoRAMethod
from baselines.moe_lora import MoELoRAMethod
from baselines.pcgrad import PCGradFullFineTune, PCGradLoRA
import gemsbench.train
from gemsbench.methods.base import RunContext

TRAIN = {"max_steps": 3, "batch_size": 4, "eval_every": 3, "val_examples": 4, "precision": "fp32"}


@pytest.mark.parametrize("cls,fmt,source", [
    (MoELoRAMethod, "timeline", "tiny_llama"),  # windows mixing tasks: per-token routing
    (MoELoRAMethod, "prompt", "tiny_t5"),  # decoder inputs shorter than the prompt: per-example routing
    (HydraLoRAMethod, "prompt", "tiny_llama"),
    (PCGradLoRA, "prompt", "tiny_llama"),
    (PCGradFullFineTune, "timeline", "tiny_llama"),
])
def test_method_trains_and_scores_in_the_loop(cls, fmt, source, synthetic_dataset, tmp_path):
    method = cls()
    ctx = RunContext(synthetic_dataset, tmp_path, seed=1, hparams=method.hparams, train={**TRAIN, "format": fmt},
                     backbone={"source": source}, loop=gemsbench.train)
    summary = method.fit(ctx)
    assert summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    if method.uses_task_gradients:
        mixed = [e for e in log if e["n_rec"] and e["n_search"]]
        assert mixed and all(e["pcgrad_conflict"] in (0, 1) for e in mixed)
    valid = synthetic_dataset.splits["valid"].head(6)
    scores = method.load_scorer(ctx).score(valid)
    assert scores.shape == (6, synthetic_dataset.n_items) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
