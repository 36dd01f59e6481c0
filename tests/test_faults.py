"""Fault injection on tiny models: each test breaks something a real run meets — a kill -9, a changed config
under a half-finished run, a diverging loss, a damaged file, a second trainer, a killed parent, a write cut
short — and checks the protection that handles it (it fails when that protection is removed)."""
import copy
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import gemsbench.train
from gemsbench.atomic import DamagedFile, atomic_dir, atomic_write, atomic_write_text
from gemsbench.methods.base import RunContext
from gemsbench.methods.registry import build_method, method_class
from gemsbench.train import Loop, TrainingError

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"max_steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 1, "val_examples": 6,
         "precision": "fp32"}


def context(ds, run_dir, seed=5, backbone=None, hparams=None, **train):
    return RunContext(ds, run_dir, seed=seed, hparams=hparams or {"lr": 1e-3}, train={**TRAIN, **train},
                      backbone=backbone or {"source": "tiny_llama"}, loop=gemsbench.train)


def trainable(loop: Loop) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in loop.model.named_parameters() if p.requires_grad}


def interrupt_after(method, ctx, steps: int) -> None:
    """Train until ``steps`` optimizer steps are taken (each checkpointed), then interrupt as a killed job would."""
    real_step, taken = method.optimizer_step, []

    def step(optimizer, task_grads):
        if len(taken) == steps:
            raise KeyboardInterrupt
        taken.append(1)
        return real_step(optimizer, task_grads)

    method.optimizer_step = step
    with pytest.raises(KeyboardInterrupt):
        Loop(method, ctx).run()
    assert (Path(ctx.run_dir) / "checkpoint" / "last.pt").exists()


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


# --- a resume never continues another run ----------------------------------------------------------------------
def other_dataset(ds):
    return replace(ds, meta={**ds.meta, "params": {"search_share": 0.5}})


SPEC_CHANGES = {  # field class -> (what the rerun changes, the spec key the warning names)
    "hyper-parameter": (lambda ds, d: (build_method("full_ft", {"lr": 5e-2}), context(ds, d, hparams={"lr": 5e-2})),
                        "hparams.lr"),
    "method": (lambda ds, d: (build_method("pcgrad_full", {"lr": 1e-3}), context(ds, d)), "method"),
    "train setting": (lambda ds, d: (build_method("full_ft", {"lr": 1e-3}), context(ds, d, batch_size=2)),
                      "train.batch_size"),
    "seed": (lambda ds, d: (build_method("full_ft", {"lr": 1e-3}), context(ds, d, seed=6)), "seed"),
    "backbone": (lambda ds, d: (build_method("full_ft", {"lr": 1e-3}),
                                context(ds, d, backbone={"source": "tiny_llama", "seed": 1})), "backbone.seed"),
    "dataset parameters": (lambda ds, d: (build_method("full_ft", {"lr": 1e-3}), context(other_dataset(ds), d)),
                           "dataset.meta.params"),
}


@pytest.mark.parametrize("change", SPEC_CHANGES, ids=SPEC_CHANGES)
def test_a_checkpoint_of_another_run_spec_is_never_resumed(change, synthetic_dataset, tmp_path, caplog):
    """The rerun after a config change starts over (with a warning naming the change) and trains exactly as a
    fresh run of the new spec: nothing of the old run's weights, optimizer state, schedule or log is kept."""
    make, key = SPEC_CHANGES[change]
    interrupt_after(build_method("full_ft", {"lr": 1e-3}), context(synthetic_dataset, tmp_path / "run"), steps=3)
    method, ctx = make(synthetic_dataset, tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="gemsbench.train"):
        rerun = Loop(method, ctx)
        summary = rerun.run()
    assert not summary["resumed"] and summary["steps"] == 6
    assert "starting over" in caplog.text and f"{key}: " in caplog.text
    assert logged_steps(tmp_path / "run") == list(range(6))
    fresh_method, fresh_ctx = make(synthetic_dataset, tmp_path / "fresh")
    fresh = Loop(fresh_method, fresh_ctx)
    fresh.run()
    want, got = trainable(fresh), trainable(rerun)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_changed_code_default_is_a_changed_run_spec(synthetic_dataset, tmp_path, monkeypatch, caplog):
    interrupt_after(build_method("full_ft"), context(synthetic_dataset, tmp_path, hparams={}), steps=3)
    cls = method_class("full_ft")
    monkeypatch.setattr(cls, "defaults", {**cls.defaults, "weight_decay": 0.5})
    with caplog.at_level(logging.WARNING, logger="gemsbench.train"):
        summary = Loop(build_method("full_ft"), context(synthetic_dataset, tmp_path, hparams={})).run()
    assert not summary["resumed"] and "hparams.weight_decay: 0.01 -> 0.5" in caplog.text


# --- divergence ------------------------------------------------------------------------------------------------
def diverge_after(method, steps: int) -> None:
    """Make the weights non-finite after ``steps`` optimizer steps (the loss of the next step is then NaN)."""
    real_step, taken = method.optimizer_step, []

    def step(optimizer, task_grads):
        taken.append(1)
        out = real_step(optimizer, task_grads)
        if len(taken) == steps:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    method.optimizer_step = step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_divergence_stops_the_run_with_advice_that_fits_it_and_is_never_resumed(precision, synthetic_dataset,
                                                                                 tmp_path):
    method = build_method("full_ft", {"lr": 1e-3})
    diverge_after(method, steps=2)
    with pytest.raises(TrainingError, match="non-finite loss at step 2") as failure:
        Loop(method, context(synthetic_dataset, tmp_path, precision=precision)).run()
    message = str(failure.value)
    assert "lower the learning rate (hparams.lr = 0.001)" in message
    assert ("train.precision: fp32" in message) == (precision == "bf16")
    assert not (tmp_path / "checkpoint" / "last.pt").exists()  # step 2's checkpoint held the NaN weights' start
    if precision == "bf16":
        return  # what follows does not depend on the precision (and bf16 is emulated, slowly, on AVX2-only CPUs)
    summary = Loop(build_method("full_ft", {"lr": 1e-3}), context(synthetic_dataset, tmp_path,
                                                                  precision=precision)).run()
    assert not summary["resumed"] and summary["steps"] == 6


# --- damaged files ---------------------------------------------------------------------------------------------
class Payload:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def damage(path: Path, how: str, tmp_path: Path) -> None:
    if how == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a pickle of arbitrary objects
        torch.save({"step": 1, "model": Payload(tmp_path / "pwned")}, path)


@pytest.mark.parametrize("how", ["random bytes", "truncated", "foreign objects"])
def test_a_damaged_resume_checkpoint_is_reported_with_its_fix(how, synthetic_dataset, tmp_path):
    interrupt_after(build_method("full_ft", {"lr": 1e-3}), context(synthetic_dataset, tmp_path), steps=2)
    last = tmp_path / "checkpoint" / "last.pt"
    damage(last, how, tmp_path)
    with pytest.raises(DamagedFile) as failure:
        Loop(build_method("full_ft", {"lr": 1e-3}), context(synthetic_dataset, tmp_path)).run()
    message = str(failure.value)
    assert message.startswith(f"{last} is damaged (") and "delete it; the run then starts over" in message
    assert "weights_only" not in message and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("how", ["random bytes", "truncated", "foreign objects"])
def test_a_damaged_best_checkpoint_is_reported_with_its_fix(how, synthetic_dataset, tmp_path):
    method = build_method("lora")
    ctx = context(synthetic_dataset, tmp_path, hparams={})
    method.fit(ctx)
    best = tmp_path / "checkpoint" / "best.pt"
    damage(best, how, tmp_path)
    with pytest.raises(DamagedFile, match=f"^{re.escape(str(best))} is damaged .*summary.json, then train the run"):
        build_method("lora").load_scorer(ctx)
    assert not (tmp_path / "pwned").exists()


def test_damaged_prepared_data_is_reported_with_its_fix(synthetic_dataset, tmp_path):
    import shutil

    from gemsbench.data.prepared import PreparedDataError, load_prepared

    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset.root, data)
    (data / "valid.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DamagedFile, match=f"^{re.escape(str(data / 'valid.parquet'))} is damaged .*delete "
                                          f"{re.escape(str(data))} and run the prepare step again"):
        load_prepared(data)
    (data / "meta.json").write_text("{ half")
    (data / "valid.parquet").unlink()
    with pytest.raises(PreparedDataError, match=r"lacks \['valid.parquet'\]: delete the directory"):
        load_prepared(data)
    shutil.copy(synthetic_dataset.root / "valid.parquet", data / "valid.parquet")
    with pytest.raises(DamagedFile, match=f"^{re.escape(str(data / 'meta.json'))} is damaged"):
        load_prepared(data)


def test_a_damaged_knowledge_cache_is_reported_with_its_fix(tmp_path):
    from gemsbench.knowledge import KnowledgeSpace, knowledge_space_path, load_knowledge_space

    spec, space = {"source": "tiny_llama"}, KnowledgeSpace(articles=2, max_tokens=16)
    path = knowledge_space_path(tmp_path, spec, space)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    with pytest.raises(DamagedFile, match=f"^{re.escape(str(path))} is damaged .*delete it and .*collects it again"):
        load_knowledge_space(path, spec, space, "output", ["model.layers.0.self_attn.q_proj"])


def test_a_damaged_backbone_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    """The cache of the packaged GGUF is rebuilt when any of its files does not load; a complete one is used."""
    from gemsbench import backbone

    builds = []

    def tiny_dequantised(name_or_path, gguf_file):
        assert gguf_file == backbone.GGUF_FILE
        builds.append(1)
        tok = backbone.char_tokenizer()
        return backbone.tiny_model("tiny_llama", len(tok), seed=len(builds)), tok

    monkeypatch.setattr(backbone, "dequantised_gguf", tiny_dequantised)
    cache = tmp_path / "backbones" / "smollm2-135m-instruct"
    first = backbone.load_backbone({"source": "smollm2_gguf"}, tmp_path).model.state_dict()
    assert len(builds) == 1
    again = backbone.load_backbone({"source": "smollm2_gguf"}, tmp_path).model.state_dict()
    assert len(builds) == 1 and all(torch.equal(first[k], again[k]) for k in first)
    weights = cache / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="gemsbench.backbone"):
        backbone.load_backbone({"source": "smollm2_gguf"}, tmp_path)
    assert len(builds) == 2 and f"{cache} is damaged" in caplog.text
    weights.unlink()
    backbone.load_backbone({"source": "smollm2_gguf"}, tmp_path)
    assert len(builds) == 3 and weights.exists()


# --- atomic writes ---------------------------------------------------------------------------------------------
def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


@pytest.mark.parametrize("interruption", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "Ctrl-C"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(interruption, tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def write(tmp):
        tmp.write_text("half of the ne")
        raise interruption

    with pytest.raises(type(interruption)):
        atomic_write(target, write)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    with pytest.raises(type(interruption)):
        with atomic_dir(tmp_path / "data") as staging:
            (staging / "items.parquet").write_text("x")
            raise interruption
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_a_write_is_on_disk_before_it_replaces_the_target(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    atomic_write_text("new", tmp_path / "table.csv")
    tmp = str(tmp_path / f".table.csv.tmp{os.getpid()}")
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    assert (tmp_path / "table.csv").read_text() == "new"


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".last.pt.tmp{dead.pid}").write_bytes(b"x" * 1000)  # a writer killed mid-write
    (tmp_path / f".last.pt.tmp{os.getppid()}").write_bytes(b"x")  # a live writer's: not touched
    atomic_write_text("new", tmp_path / "last.pt")
    assert leftovers(tmp_path) == [f".last.pt.tmp{os.getppid()}"]


# --- whole trainer processes -----------------------------------------------------------------------------------
def cli_config(tmp_path: Path, **train) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["train"].update(train)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_command(config: Path, data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "gemsbench.cli.train", "--config", str(config), "--dataset", "ml100k",
            "--backbone", "tiny_llama", "--run", "full_ft", "--seed", "1", "--data", str(data), "--run-dir",
            str(run_dir)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has stopped; only its exit status waits to be collected


def test_kill_9_mid_training_then_resume_ends_bit_identical(synthetic_dataset, tmp_path):
    from gemsbench.config import Run, load_config
    from gemsbench.cli.common import build_run

    config = cli_config(tmp_path, max_steps=40, checkpoint_every=2, eval_every=40, selection="last")
    method, reference_ctx = build_run(load_config(config), Run("ml100k", "tiny_llama", "full_ft", 1),
                                      str(synthetic_dataset.root), str(tmp_path / "reference"))
    torch.manual_seed(1)
    method.fit(reference_ctx)

    run_dir = tmp_path / "killed"
    trainer = subprocess.Popen(train_command(config, synthetic_dataset.root, run_dir), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "checkpoint" / "last.pt").exists() or trainer.poll() is not None, what="last.pt")
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    assert trainer.returncode == -signal.SIGKILL and not (run_dir / "summary.json").exists()
    assert torch.load(run_dir / "checkpoint" / "last.pt", weights_only=True)["step"] < 40

    r = subprocess.run(train_command(config, synthetic_dataset.root, run_dir), env=ENV, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["resumed"]
    want = torch.load(tmp_path / "reference" / "checkpoint" / "best.pt", weights_only=True)
    got = torch.load(run_dir / "checkpoint" / "best.pt", weights_only=True)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    def losses(d):
        return [(e["step"], e["loss_rec"], e["loss_search"]) for e in map(json.loads, (d / "train_log.jsonl")
                                                                          .read_text().splitlines())]
    assert losses(run_dir) == losses(tmp_path / "reference") and len(losses(run_dir)) == 40


def test_a_second_trainer_of_the_same_run_fails_at_once(synthetic_dataset, tmp_path):
    from gemsbench.cli.train import training_lock

    config, run_dir = cli_config(tmp_path), tmp_path / "run"
    with training_lock(run_dir):
        r = subprocess.run(train_command(config, synthetic_dataset.root, run_dir), env=ENV, capture_output=True,
                           text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"another trainer (pid {os.getpid()} on " in r.stderr and f"is training into {run_dir}" in r.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".train.lock"]  # it wrote nothing


def test_a_killed_parent_leaves_no_orphan_trainer(synthetic_dataset, tmp_path):
    """Killing the shell a rule runs the trainer in (as a cancelled job or a killed Snakemake does) stops the
    trainer too: it neither trains on into the run directory nor writes a summary later."""
    from gemsbench.locks import file_lock

    config, run_dir = cli_config(tmp_path, max_steps=100_000, eval_every=100_000), tmp_path / "run"
    command = shlex.join(map(str, train_command(config, synthetic_dataset.root, run_dir)))
    shell = subprocess.Popen(["bash", "-c", f"{command}; echo finished"], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    lock = run_dir / ".train.lock"
    wait_for(lambda: lock.exists() and lock.read_text().startswith("pid ") and (run_dir / "train_log.jsonl").exists(),
             what="the trainer to start training")
    trainer = int(lock.read_text().split()[1])
    assert trainer != shell.pid and running(trainer)
    shell.send_signal(signal.SIGKILL)
    shell.wait()
    wait_for(lambda: not running(trainer), timeout=30, what="the orphaned trainer to stop")
    with file_lock(lock, wait=False):  # released
        pass
    assert not (run_dir / "summary.json").exists()
