"""The paper configuration, end to end on fixtures in the real formats with tiny models.

Same datasets, loaders, training format and method entries as config/paper.yaml; only the data paths point at
fixtures the test writes, the backbones are tiny random models, and training is a few steps.
"""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from dag_args import PARALLEL_JOBS
from fixtures_paper import write_amazon_unisar_fixture, write_qilin_fixture

ROOT = Path(__file__).resolve().parent.parent
# a count-based baseline and GEMS on both datasets; every method entry is listed by -n below, and the other kinds
# (shared encoders, LoRA) train on the tiny models' prompt and timeline formats in tests/test_baselines_*.py
RUN_METHODS = ("popularity", "gems")


def paper_on_fixtures(tmp_path: Path, methods=RUN_METHODS) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cfg["datasets"]["qilin"]["params"] = write_qilin_fixture(tmp_path / "qilin")
    cfg["datasets"]["amazon"]["params"] = write_amazon_unisar_fixture(tmp_path / "amazon")
    cfg["backbones"] = {"flan_t5_base": {"source": "tiny_t5"}, "qwen2_5_0_5b": {"source": "tiny_llama"}}
    cfg["seeds"] = [1]
    cfg["train"].update(max_epochs=1, max_steps=2, batch_size=2, grad_accum=1, eval_every=1, val_examples=4,
                        precision="fp32")
    if methods:
        cfg["methods"] = {k: v for k, v in cfg["methods"].items() if k in methods}
        for spec in cfg["methods"].values():
            if spec["method"] in ("sasrec", "search_encoder", "joint_encoder"):
                spec["hparams"] = {"epochs": 1}
            if spec["method"].startswith(("gems", "galore")):
                spec["hparams"].update(rank=4, task_rank=2, update_gap=1)
    path = tmp_path / "paper_fixture.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(cfg: Path, workdir: Path, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--configfile", str(cfg), *args], capture_output=True, text=True,
                          cwd=workdir)


def test_dry_run_lists_the_full_job_graph(tmp_path):
    cfg = paper_on_fixtures(tmp_path, methods=None)
    r = snakemake(cfg, tmp_path, "-n")
    assert r.returncode == 0, r.stderr[-2000:]
    full = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    n_runs = sum(len(d["backbones"]) for d in full["datasets"].values()) * len(full["methods"]) * len(full["seeds"])
    # the sensitivity sweep's extra GEMS runs, one per grid point other than the base, on the first seed
    n_sweep = sum(len(d["backbones"]) for d in full["datasets"].values()) * sum(
        len(points) for points in full["sensitivity"]["grid"].values())
    assert n_sweep == 20
    out = r.stdout + r.stderr
    train_line = next(line for line in out.splitlines() if line.strip().startswith("train "))
    assert int(train_line.split()[1]) == n_runs // 3 + n_sweep  # the fixture config runs one seed


def test_paper_config_runs_end_to_end_on_fixtures(tmp_path):
    cfg = paper_on_fixtures(tmp_path)
    # the main table's part of the DAG; every other target is run end to end by tests/test_dag.py
    # the target between one-value options: --configfile before it and --set-threads after it read every argument
    r = snakemake(cfg, tmp_path, "--cores", "2", "main_table", *PARALLEL_JOBS)
    assert r.returncode == 0, r.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results" / "paper" / "tables" / "main.csv")
    assert set(table["dataset"]) == {"qilin", "amazon"}
    assert set(table["run"]) == set(RUN_METHODS)
    assert set(table["backbone"]) == {"flan_t5_base", "qwen2_5_0_5b"}
