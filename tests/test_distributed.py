"""Data-parallel training (gemsbench.distributed): 2 processes over gloo train every case as 1 process does.

One pair of spawned processes trains all cases (process start-up is the expensive part); the test process
trains the 1-process references and compares the logged metrics and the final weights (``selection: last``: the
best checkpoint is the last step's). Dropout is off (tiny T5 has 0.1 by default): dropout masks are drawn per
process, so a run with dropout cannot equal its 1-process run on any number of processes.

The backbones are converted to float64 (every trainable weight, hence every gradient): float32 sums of the same terms in another
order differ in the last bits, and Adam's first steps move an entry by about ±lr whatever its gradient's size,
so an entry whose gradient is no larger than that rounding noise could step either way; float64 leaves far less
noise to reach the (float32) subspace projections."""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gemsbench.train
from gemsbench.data.prepared import load_prepared
from gemsbench.distributed import World, shard
from gemsbench.methods.base import RunContext
from gemsbench.methods.registry import build_method
from gemsbench.train import Loop, TrainingError

TRAIN = {"max_steps": 3, "batch_size": 4, "eval_every": 3, "val_examples": 4, "precision": "fp32",
         "selection": "last", "conflict_every": 2}
SUBSPACE = {"rank": 4, "task_rank": 2, "update_gap": 2}  # a basis refresh at steps 0 and 2
#: name -> (method, hyper-parameters, format, backbone source); prompt-format shards hold one example per row
CASES = {
    "full_ft": ("full_ft", {}, "timeline", "tiny_llama"),
    "lora_t5": ("lora", {}, "prompt", "tiny_t5"),
    "gems": ("gems", {**SUBSPACE, "knowledge_articles": 3, "knowledge_max_tokens": 48}, "prompt", "tiny_llama"),
    "gems_no_nsp": ("gems_no_nsp", SUBSPACE, "prompt", "tiny_llama"),
    "gems_t5": ("gems_no_nsp", SUBSPACE, "prompt", "tiny_t5"),
    "pcgrad": ("pcgrad_full", {}, "timeline", "tiny_llama"),
}
#: the resume case: 2 processes train 2 of 4 steps (checkpoint at step 2), 1 process finishes the run
RESUME = ("gems_no_nsp", SUBSPACE, "prompt", "tiny_llama")
RESUME_TRAIN = {"max_steps": 4, "eval_every": 4, "checkpoint_every": 2}


def context(ds, run_dir, source, fmt, **train) -> RunContext:
    """The run context; every run shares one cache (the knowledge space GEMS's null space is built from)."""
    return RunContext(ds, Path(run_dir), seed=3, hparams={}, train={**TRAIN, "format": fmt, **train},
                      backbone={"source": source, "dropout": 0.0, "cache_root": str(Path(ds.root).parent / "cache")},
                      loop=gemsbench.train)


@contextlib.contextmanager
def float64():
    """The loop's backbones in float64 for the block."""
    load = gemsbench.train.load_backbone

    def load_in_float64(*args, **kwargs):
        backbone = load(*args, **kwargs)
        backbone.model.double()
        return backbone

    gemsbench.train.load_backbone = load_in_float64
    try:
        yield
    finally:
        gemsbench.train.load_backbone = load


def fit(method, ctx) -> dict:
    with float64():
        return method.fit(ctx)


def interrupted_before_step(method, step: int):
    """Make ``method`` raise KeyboardInterrupt when it is asked for its optimizer step number ``step`` (0-based),
    as a killed job would stop."""
    real, calls = method.optimizer_step, []

    def optimizer_step(optimizer, task_grads):
        calls.append(1)
        if len(calls) > step:
            raise KeyboardInterrupt
        return real(optimizer, task_grads)

    method.optimizer_step = optimizer_step
    return method


def _rank_main(rank: int, world: int, port: int, data: str, out: str) -> None:
    """One of the 2 processes: the environment torchrun would set, one gloo group for every case."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = load_prepared(Path(data))
        for name, (method, hparams, fmt, source) in CASES.items():
            fit(build_method(method, hparams), context(ds, Path(out) / name, source, fmt))
        method, hparams, fmt, source = RESUME
        try:
            fit(interrupted_before_step(build_method(method, hparams), 2),
                context(ds, Path(out) / "resume", source, fmt, **RESUME_TRAIN))
        except KeyboardInterrupt:
            pass
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_runs(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    mp.spawn(_rank_main, args=(2, free_port(), str(synthetic_dataset.root), str(out)), nprocs=2, join=True)
    return out


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint" / "best.pt", weights_only=True)


def assert_same_run(got_dir: Path, want_dir: Path) -> None:
    got, want = read_log(got_dir), read_log(want_dir)
    assert [e["step"] for e in got] == [e["step"] for e in want]
    for g, w in zip(got, want):
        for key in ("n_rec", "n_search", "tokens", "lr"):
            assert g[key] == w[key], (key, g["step"])
        for key in [k for k in w if k.startswith(("loss_", "val_", "cos_rec", "gate_", "pcgrad"))]:
            if w[key] is None:
                assert g[key] is None, key
            else:
                assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-5), (key, g["step"])
    a, b = weights(got_dir), weights(want_dir)
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_as_one(name, two_process_runs, synthetic_dataset, tmp_path):
    method, hparams, fmt, source = CASES[name]
    fit(build_method(method, hparams), context(synthetic_dataset, tmp_path, source, fmt))
    assert_same_run(two_process_runs / name, tmp_path)
    log = read_log(two_process_runs / name)
    assert all(e["processes"] == 2 and e["allreduce_bytes"] > 0 for e in log)
    if build_method(method).uses_task_gradients:  # both task gradients reduced: twice the parameters' bytes
        params = sum(t.numel() * t.element_size() for t in weights(two_process_runs / name).values())
        assert log[0]["allreduce_bytes"] >= 2 * params


def test_some_process_held_no_example_of_a_task(synthetic_dataset, tmp_path):
    """The prompt cases above meet shards without any example of one task (their gradients are weighted by the
    global counts only): this pins that the data really holds such a step."""
    loop = Loop(build_method("full_ft"), context(synthetic_dataset, tmp_path, "tiny_llama", "prompt"))
    tasks = {int(t) for b in loop.micro_batches(0) for t in b["example_task"].tolist()}
    assert tasks == {0, 1}  # the global batch of a step holds both tasks ...
    one_task_shards = 0
    for step in range(TRAIN["max_steps"]):
        for rank in range(2):
            units = shard(loop.step_units(step), World(rank, 2))
            batches = loop.b.encoder.train_batches(units, loop.s.batch_tokens)
            held = {int(t) for b in batches for t in b["example_task"].tolist()}
            one_task_shards += len(held) == 1
    assert one_task_shards > 0  # ... but some process's shard of some step holds one only


def test_resume_on_one_process_of_a_run_two_processes_began(two_process_runs, synthetic_dataset, tmp_path):
    method, hparams, fmt, source = RESUME
    run_dir = two_process_runs / "resume"
    assert (run_dir / "checkpoint" / "last.pt").exists() and len(read_log(run_dir)) == 2
    summary = fit(build_method(method, hparams), context(synthetic_dataset, run_dir, source, fmt, **RESUME_TRAIN))
    assert summary["resumed"] and summary["steps"] == 4 and summary["processes"] == 1
    fit(build_method(method, hparams), context(synthetic_dataset, tmp_path, source, fmt, **RESUME_TRAIN))
    assert_same_run(run_dir, tmp_path)


def test_a_world_size_that_does_not_divide_the_global_batch_is_refused(synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(gemsbench.train, "current", lambda: World(0, 3))
    with pytest.raises(TrainingError, match=r"4 units cannot be split evenly over 3 processes.*divides 4"):
        Loop(build_method("full_ft"), context(synthetic_dataset, tmp_path, "tiny_llama", "timeline"))


# --- starting the processes: the trainer's own launcher -------------------------------------------------------
def test_the_launch_command_for_one_node_and_for_a_slurm_allocation():
    from gemsbench.distributed import DistributedError, launch_command

    argv = ["--config", "c.yaml", "--run", "gems"]
    assert launch_command(4, 1, argv, "py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m", "gemsbench.cli.train",
        "--", *argv]
    assert launch_command(4, 2, argv, "py", slurm=("77", "node01")) == [
        "srun", "--nodes", "2", "--ntasks-per-node", "1", "py", "-m", "torch.distributed.run", "--nproc_per_node",
        "4", "--nnodes", "2", "--rdzv_backend", "c10d", "--rdzv_id", "77", "--rdzv_endpoint", "node01:29500",
        "-m", "gemsbench.cli.train", "--", *argv]
    with pytest.raises(DistributedError, match="needs a SLURM allocation"):
        launch_command(4, 2, argv, "py")
    with pytest.raises(DistributedError, match="must be at least 1"):
        launch_command(0, 1, argv, "py")


@pytest.mark.parametrize("run,relaunched", [("full_ft", True), ("popularity", False)])
def test_the_trainer_relaunches_itself_under_torchrun_for_llm_methods_only(run, relaunched, monkeypatch):
    """`--processes 2`: an LLM method's trainer replaces itself by torchrun with the threads shared out; a method
    that trains outside the shared loop (popularity) trains in the process it was started in."""
    import argparse
    import sys

    from gemsbench.cli import train as cli
    from gemsbench.config import Run, load_config

    started = []
    monkeypatch.setattr(cli.os, "execvpe", lambda file, args, env: started.append((file, args, env)))
    monkeypatch.setattr(sys, "argv", ["train.py", "--processes", "2", "--run", run])
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    config = load_config(Path(__file__).resolve().parent.parent / "config" / "test.yaml")
    args = argparse.Namespace(processes=2, nodes=1)
    cli.relaunch(args, config, Run("ml100k", "tiny_llama", run, 1))
    if not relaunched:
        assert not started
        return
    (file, command, env), = started
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert command[-5:] == ["--", "--processes", "2", "--run", run] and env["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("LOCAL_RANK", "0")  # already one of torchrun's processes: never again
    cli.relaunch(args, config, Run("ml100k", "tiny_llama", run, 1))
    assert len(started) == 1
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(TrainingError, match="nodes: 2 needs a SLURM allocation"):
        cli.relaunch(argparse.Namespace(processes=2, nodes=2), config, Run("ml100k", "tiny_llama", run, 1))


def test_the_trainer_started_with_two_processes_trains_under_torchrun(synthetic_dataset, tmp_path):
    """The real path end to end: `python -m gemsbench.cli.train --processes 2` starts torchrun, whose two gloo
    processes train the run (the log says 2 processes) with the 1-process run's first losses."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["train"].update(max_steps=2, eval_every=2, val_examples=4, selection="last", conflict_every=0)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))

    def train(run_dir: Path, processes: int) -> list[dict]:
        done = subprocess.run(
            [sys.executable, "-m", "gemsbench.cli.train", "--processes", str(processes), "--config", str(config),
             "--dataset", "ml100k", "--backbone", "tiny_llama", "--run", "full_ft", "--seed", "1", "--data",
             str(synthetic_dataset.root), "--run-dir", str(run_dir)],
            env={**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}, capture_output=True,
            text=True, cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]

    two, one = train(tmp_path / "two", 2), train(tmp_path / "one", 1)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["processes"] == 1
    assert len(two) == len(one) == 2
    for key in ("loss_rec", "loss_search"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-5)
