"""The whole DAG on the tiny config, end to end, in a temporary directory (what `snakemake --cores all` does)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dag_args import PARALLEL_JOBS

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(workdir, *args, configfile=ROOT / "config" / "test.yaml"):
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), *args],
                          capture_output=True, text=True, cwd=workdir)


@pytest.fixture(scope="module")
def dag_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("dag")
    r = snakemake(work, "--cores", "2", *PARALLEL_JOBS)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, r


def test_main_table_is_made(dag_run):
    work, r = dag_run
    res = work / "results" / "test"
    table = pd.read_csv(res / "tables" / "main.csv")
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    assert set(table["run"]) == set(cfg["methods"])
    assert set(table["task"]) == {"rec", "search"} and set(table["protocol"]) == {"sampled", "full"}
    md = (res / "tables" / "main.md").read_text()
    assert "sampled protocol" in md and "full protocol" in md
    assert "main table: results/test/tables/main.md" in (res / "logs" / "tables" / "main.log").read_text()


def test_every_run_keeps_per_example_rows_and_logs(dag_run):
    work, _ = dag_run
    res = work / "results" / "test"
    for summary in res.glob("runs/*/*/*/seed*/eval/test_summary.json"):
        rows = pd.read_parquet(summary.with_name("test_rows.parquet"))
        s = json.loads(summary.read_text())
        assert len(rows) == 2 * s["examples"]  # one row per example and protocol
        assert {"example_id", "user", "task", "protocol", "ndcg@10"} <= set(rows.columns)
    assert list(res.glob("logs/train/**/*.log"))


def test_second_run_has_nothing_to_do(dag_run):
    work, _ = dag_run
    r = snakemake(work, "-n", "--cores", "2")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


@pytest.mark.parametrize("mutate,key", [
    (lambda c: c["train"].update(max_steps=-1), "max_steps"),
    (lambda c: c["methods"]["full_ft"]["hparams"].update(lr=float("nan")), "methods/full_ft/hparams/lr"),
], ids=["schema", "hyper-parameter"])
def test_bad_config_stops_snakemake_with_the_key(mutate, key, tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "-n", configfile=path)
    assert r.returncode != 0
    assert key in r.stderr + r.stdout


def planned_rules(r) -> set[str]:
    """The rules a dry run would run."""
    import re
    return set(re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, flags=re.M))


def test_a_deleted_or_replaced_data_file_redoes_what_read_it(dag_run):
    """Every rule that reads the prepared dataset declares each of its files (not only stats.json): a deleted
    one is made again and everything downstream redone; one replaced by other content redoes everything that read
    it."""
    work, _ = dag_run
    data = work / "results" / "test" / "data" / "ml100k"
    deleted, aside = data / "train.parquet", data / "train.parquet.aside"
    deleted.rename(aside)
    try:
        deleted_plan = planned_rules(snakemake(work, "-n", "--cores", "2"))
    finally:
        aside.rename(deleted)
    replaced = data / "meta.json"
    content, stat = replaced.read_bytes(), replaced.stat()
    replaced.write_bytes(content + b"\n")
    try:
        replaced_plan = planned_rules(snakemake(work, "-n", "--cores", "2"))
    finally:
        replaced.write_bytes(content)
        os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert {"prepare_data", "train", "evaluate", "retention_run", "retention_base", "main_table"} <= deleted_plan
    assert {"train", "evaluate", "retention_run", "retention_base", "main_table"} <= replaced_plan
    assert "prepare_data" not in replaced_plan


def test_retention_measures_only_the_first_retention_seeds_seeds(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["seeds"] = [1, 2]
    cfg["retention"]["seeds"] = 1
    path = tmp_path / "two_seeds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "-n", "retention", configfile=path)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = [line for line in (r.stdout + r.stderr).splitlines() if "output:" in line and "retention.json" in line]
    llm_runs = [name for name, spec in cfg["methods"].items() if spec["method"] != "popularity"]
    assert len(jobs) == len(llm_runs) and all("/seed1/" in line for line in jobs)


TARGETS = ["main_table", "ablation", "sensitivity", "conflict", "convergence", "retention", "efficiency", "figures",
           "report"]


def test_all_makes_every_named_target(dag_run):
    work, _ = dag_run
    r = snakemake(work, "-n", *TARGETS)  # one dry run of every named target: each one is already complete
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
    res = work / "results" / "test"
    for name in ("main", "ablation", "efficiency", "retention", "sensitivity"):
        for ext in ("csv", "md", "tex"):
            assert (res / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    for name in ("significance.csv", "conflict.csv", "conflict_summary.csv", "conflict_layers.csv", "conflict.md",
                 "convergence.csv", "convergence_summary.csv", "convergence.md"):
        assert (res / "tables" / name).stat().st_size > 0, name
    stems = ["main_ml100k_tiny_llama_sampled", "main_ml100k_tiny_llama_full", "efficiency_ml100k_tiny_llama",
             "conflict_ml100k_tiny_llama", "conflict_layers_ml100k_tiny_llama", "retention_ml100k_tiny_llama",
             "sensitivity_ml100k_tiny_llama", "convergence_ml100k_tiny_llama"]
    drawn = sorted(p.name for p in (res / "figures").iterdir())
    assert drawn == sorted(f"{s}.{e}" for s in stems for e in ("pdf", "png"))
    assert sorted(p.name for p in (res / "paper_figures").iterdir()) == drawn  # config: paper_figures_dir
    report = (res / "report.html").read_text()
    assert all(f"{s}.png" in report for s in stems)  # every figure is in the report


def test_figures_are_redrawn_from_saved_tables_without_retraining(dag_run):
    import re
    work, _ = dag_run
    res = work / "results" / "test"
    for folder in ("figures", "paper_figures"):
        for f in (res / folder).iterdir():
            f.unlink()
    r = snakemake(work, "--cores", "2", "figures")
    assert r.returncode == 0, r.stderr[-3000:]
    ran = set(re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, flags=re.M))
    assert ran and ran <= {"analysis_figures", "retention_figures", "sensitivity_figures", "convergence_figures",
                           "publish_figure", "figures"}, ran
    assert len(list((res / "paper_figures").iterdir())) == 16


def test_convergence_table_has_every_llm_runs_validations(dag_run):
    work, _ = dag_run
    res = work / "results" / "test"
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    curves = pd.read_csv(res / "tables" / "convergence.csv")
    llm = {name for name, spec in cfg["methods"].items() if spec["method"] != "popularity"}
    assert set(curves["run"]) == llm
    steps = cfg["train"]["max_steps"] // cfg["train"]["eval_every"]
    for _, grp in curves.groupby(["run", "seed"]):
        assert len(grp) == steps and grp["targets"].is_monotonic_increasing and (grp["targets"] > 0).all()
        assert grp["value"].between(0, 1).all()
    summary = pd.read_csv(res / "tables" / "convergence_summary.csv")
    assert set(summary["run"]) == llm


def test_a_config_asking_for_two_processes_passes_them_to_every_trainer_and_replans_nothing(dag_run):
    """`processes: 2` reaches every trainer as --processes 2 (the trainer starts torchrun for LLM methods itself:
    tests/test_distributed.py), and neither it nor fewer threads re-plan a finished run: they are resources, not
    parameters."""
    work, _ = dag_run
    r = snakemake(work, "-n", "--cores", "1", "--config", "processes=2")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
    r = snakemake(work, "-n", "-p", "--cores", "2", "--forcerun", "train", "--config", "processes=2")
    assert r.returncode == 0, r.stderr
    commands = [line for line in r.stdout.splitlines() if "-m gemsbench.cli.train" in line]
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    assert len(commands) == len(config["methods"]) + 2  # + the two sensitivity points
    assert all("OMP_NUM_THREADS=2 python -m gemsbench.cli.train --processes 2 --nodes 1 --config" in c
               for c in commands)
