"""Sensitivity sweeps: the grid's expansion into runs (names, overlays, the base point reused), the run name
resolution every entry point shares, unchanged main-grid digests, the sensitivity table from hand-made evaluation
summaries, its figures, and the sweep jobs of the DAG (dry runs only)."""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gemsbench.analysis.registry import TABLES
from gemsbench.cli.common import config_and_run
from gemsbench.cli.figures import sensitivity_figures
from gemsbench.config import (ConfigError, Run, digest, method_entry, run_spec, run_train_settings, runs,
                              sensitivity_runs, sweep_points, sweep_runs, validate)
from gemsbench.config import run_knowledge_space
from gemsbench.methods.registry import method_class

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
DEFAULT_SWEEP = ["gems~rank-64", "gems~rank-256", "gems~update_gap-4", "gems~update_gap-16", "gems~scale-0.5",
                 "gems~scale-2", "gems~null_tau-0.005", "gems~null_tau-0.1", "gems~gate-fixed0.25",
                 "gems~gate-fixed0.75"]


def raw(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def config(name: str = "test.yaml", **sensitivity) -> dict:
    cfg = raw(name)
    if sensitivity:
        cfg["sensitivity"] = sensitivity
    return validate(cfg)


# --- expansion ---------------------------------------------------------------------------------------------
def test_default_grid_is_ten_gems_runs_of_the_first_seed_around_the_main_grid_run():
    cfg = config("default.yaml")
    extra = sweep_runs(cfg)
    assert [r.run for r in extra] == DEFAULT_SWEEP
    assert {(r.dataset, r.backbone, r.seed) for r in extra} == {("ml100k", "smollm2", 42)}
    assert not set(extra) & set(runs(cfg))  # sweep runs stay out of the main grid
    assert all(re.fullmatch(r"[A-Za-z0-9._+~-]+", r.run) for r in extra)  # wildcard- and filesystem-safe
    points = sweep_points(cfg)
    assert [(p.param, p.value) for p in points if p.base] == [
        ("rank", "128"), ("update_gap", "8"), ("scale", "1"), ("null_tau", "0.02"), ("gate", "heuristic")]
    assert {p.run for p in points if p.base} == {"gems"}
    assert [p.value for p in points if p.param == "rank"] == ["64", "128", "256"]  # numeric order, base inside
    assert [p.value for p in points if p.param == "gate"] == ["heuristic", "fixed0.25", "fixed0.75"]
    gate = next(p for p in points if p.run == "gems~gate-fixed0.75")
    assert gate.overlay == {"gate": "fixed", "gate_rec_weight": 0.75}
    # the table reads the base entry's seed-42 main-grid run plus the sweep
    assert sensitivity_runs(cfg) == [Run("ml100k", "smollm2", "gems", 42), *extra]


def test_sweep_entry_is_the_base_entry_with_the_point_overlaid():
    cfg = config("default.yaml")
    cfg["methods"]["gems"] = {**cfg["methods"]["gems"], "hparams": {"lr": 1e-3}, "train": {"max_steps": 7}}
    entry = method_entry(cfg, "gems~gate-fixed0.25")
    assert entry["method"] == "gems" and entry["label"] == "GEMS (gate fixed0.25)"
    assert entry["hparams"] == {"lr": 1e-3, "gate": "fixed", "gate_rec_weight": 0.25}
    assert run_train_settings(cfg, "gems~gate-fixed0.25")["max_steps"] == 7
    spec = run_spec(cfg, Run("ml100k", "smollm2", "gems~rank-64", 42))
    base = run_spec(cfg, Run("ml100k", "smollm2", "gems", 42))
    assert spec["hparams"] == {**base["hparams"], "rank": 64} and spec["train"] == base["train"]
    assert method_entry(cfg, "gems") is cfg["methods"]["gems"]
    # a sweep run needs the same knowledge space as its base (the grid does not vary the corpus)
    assert run_knowledge_space(cfg, "gems~null_tau-0.1") == run_knowledge_space(cfg, "gems")


def test_base_values_and_repeats_are_not_new_runs():
    cfg = config(grid={"rank": [8, 4, 4, 16],  # test.yaml's gems entry has rank 8
                       "gate": [{"gate": "heuristic"}, {"gate_rec_weight": 0.25, "gate": "fixed"},
                                {"gate": "fixed", "gate_rec_weight": 0.25}],
                       "task_rank": [{"update_gap": 3, "task_rank": 2}]})
    assert [r.run for r in sweep_runs(cfg)] == ["gems~rank-4", "gems~rank-16", "gems~gate-fixed0.25",
                                                "gems~task_rank-2_3"]
    points = sweep_points(cfg)
    assert [(p.param, p.value, p.run) for p in points] == [
        ("rank", "4", "gems~rank-4"), ("rank", "8", "gems"), ("rank", "16", "gems~rank-16"),
        ("gate", "heuristic", "gems"), ("gate", "fixed0.25", "gems~gate-fixed0.25"),
        ("task_rank", "4", "gems"), ("task_rank", "2_3", "gems~task_rank-2_3")]  # base first: not all numeric
    assert len({p.run for p in points if not p.base}) == len(sweep_runs(cfg))
    # the steps read the resolved config (keys sorted): the same runs under the same names
    resolved = validate(yaml.safe_load(yaml.safe_dump(cfg, sort_keys=True)))
    assert sorted(r.path for r in sweep_runs(resolved)) == sorted(r.path for r in sweep_runs(cfg))


def test_labels_and_seeds_can_be_chosen():
    cfg = config(base="lora", seeds=[3, 4], grid={"alpha": [{"alpha": 32, "rank": 16, "label": "α 32 / r 16"}]})
    assert [(r.run, r.seed) for r in sweep_runs(cfg)] == [("lora~alpha-_32_r_16", 3), ("lora~alpha-_32_r_16", 4)]
    point = next(p for p in sweep_points(cfg) if not p.base)
    assert point.value == "α 32 / r 16" and point.overlay == {"alpha": 32, "rank": 16}
    assert [r.run for r in sensitivity_runs(cfg)][:2] == ["lora", "lora"]


def test_no_grid_no_sweep():
    cfg = config()
    del cfg["sensitivity"]
    cfg = validate(cfg)
    assert cfg["sensitivity"]["grid"] == {} and sweep_runs(cfg) == [] and sensitivity_runs(cfg) == []
    del cfg["methods"]["gems"]  # the base entry is needed only with a grid
    validate(cfg)


@pytest.mark.parametrize("sensitivity,needle", [
    ({"grid": {"rnak": [4]}}, r"'sensitivity/grid/rnak': 'rnak' is not a hyper-parameter of method 'gems'"),
    ({"grid": {"gate": [{"gate": "fixed", "gate_rec_wieght": 0.3}]}}, r"'sensitivity/grid/gate/0/gate_rec_wieght'"),
    ({"base": "gemz", "grid": {"rank": [4]}}, r"'sensitivity/base': 'gemz' is not an entry of `methods`"),
    ({"grid": {"rank": []}}, r"sensitivity/grid/rank"),
    ({"grid": {"rank": [4]}, "metrics": ["ndcg@7"]}, r"'sensitivity/metrics': 'ndcg@7' needs k = 7"),
    ({"grid": {"gate": [{"gate": "fixed", "gate_rec_weight": 0.25},
                        {"gate": "fixed", "gate_rec_weight": 0.3, "label": "fixed0.25"}]}}, r"is taken"),
])
def test_bad_grids_name_the_key(sensitivity, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        config(**sensitivity)
    if "is not a hyper-parameter" in needle:
        assert "known: [" in str(err.value) and "'rank'" in str(err.value) and "'update_gap'" in str(err.value)


def test_run_names_resolve_everywhere_or_fail_clearly(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw("test.yaml")))
    args = argparse.Namespace(config=str(path), dataset="ml100k", backbone="tiny_llama", run="gems~rank-4", seed=1)
    assert config_and_run(args)[1] == Run("ml100k", "tiny_llama", "gems~rank-4", 1)
    for bad in ("gems~rank-5", "gemz"):
        with pytest.raises(ConfigError, match=rf"run '{re.escape(bad)}' is neither .* sweep run \(\['gems~gate"):
            config_and_run(argparse.Namespace(**{**vars(args), "run": bad}))


def test_a_sensitivity_section_leaves_main_grid_digests_alone():
    with_sweep = config("default.yaml")
    plain = raw("default.yaml")
    del plain["sensitivity"]
    plain = validate(plain)
    assert runs(with_sweep) == runs(plain)
    for r in runs(with_sweep):
        entry = with_sweep["methods"][r.run]
        # run_spec as it was before sweeps existed: a run's entry looked up in `methods`
        before = {"dataset": with_sweep["datasets"][r.dataset], "backbone": with_sweep["backbones"][r.backbone],
                  "method": entry["method"],
                  "hparams": {**method_class(entry["method"]).defaults, **entry.get("hparams", {})},
                  "train": {**with_sweep["train"], **entry.get("train", {})}, "seed": r.seed}
        assert digest(run_spec(with_sweep, r)) == digest(run_spec(plain, r)) == digest(before)


# --- table and figure --------------------------------------------------------------------------------------
SCORES = {  # (run, seed) -> NDCG@10 of search; the other metrics derive from it
    ("gems", 1): 0.30, ("gems", 2): 0.34, ("gems~rank-4", 1): 0.20, ("gems~rank-4", 2): 0.26,
    ("gems~gate-fixed0.25", 1): 0.40, ("gems~gate-fixed0.25", 2): 0.44,
    ("gems", 3): 0.99, ("lora", 1): 0.99,  # another seed, a main-grid run: not sensitivity points
}


def eval_summary(run: str, seed: int) -> dict:
    s = SCORES[(run, seed)]
    metrics = {protocol: {"search": {"ndcg@10": s * f, "hr@10": 2 * s * f, "ndcg@5": 0.0, "n": 10},
                          "rec": {"ndcg@10": s * f / 2, "hr@10": s * f, "ndcg@5": 0.0, "n": 10}}
               for protocol, f in (("sampled", 1.0), ("full", 0.5))}
    return {"run": run, "method": "gems", "dataset": "ml100k", "backbone": "tiny_llama", "seed": seed,
            "split": "test", "metrics": metrics}


@pytest.fixture
def sweep_table(tmp_path):
    cfg = config(seeds=[1, 2], grid={"rank": [4, 8], "gate": [{"gate": "fixed", "gate_rec_weight": 0.25}]})
    paths = []
    for i, (run, seed) in enumerate(SCORES):
        paths.append(tmp_path / "runs" / f"{i}.json")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_text(json.dumps(eval_summary(run, seed)))
    out = tmp_path / "tables"
    out.mkdir()
    TABLES["sensitivity"].make(cfg, {"summaries": paths}, out)
    return out


def test_sensitivity_table_from_hand_made_summaries(sweep_table):
    table = pd.read_csv(sweep_table / "sensitivity.csv", dtype={"value": str})
    assert list(table.columns) == ["dataset", "backbone", "protocol", "param", "value", "base", "task", "metric",
                                   "mean", "std", "n_seeds", "run"]
    points = list(dict.fromkeys(zip(table["param"], table["value"], table["run"])))
    assert points == [("rank", "4", "gems~rank-4"), ("rank", "8", "gems"), ("gate", "heuristic", "gems"),
                      ("gate", "fixed0.25", "gems~gate-fixed0.25")]
    assert set(table["protocol"]) == {"sampled", "full"} and set(table["metric"]) == {"ndcg@10", "hr@10"}
    assert len(table) == 4 * 2 * 2 * 2  # points x protocols x tasks x metrics
    assert (table["n_seeds"] == 2).all()  # seed 3 and lora skipped

    def row(param, value, protocol="sampled", task="search", metric="ndcg@10"):
        r = table[(table["param"] == param) & (table["value"] == value) & (table["protocol"] == protocol)
                  & (table["task"] == task) & (table["metric"] == metric)]
        assert len(r) == 1
        return r.iloc[0]

    r = row("rank", "4")  # (0.20 + 0.26) / 2; sample std of two values = |a - b| / sqrt(2)
    assert r["mean"] == pytest.approx(0.23) and r["std"] == pytest.approx(0.06 / 2 ** 0.5) and not r["base"]
    for param, value in (("rank", "8"), ("gate", "heuristic")):  # the base run fills both base points
        r = row(param, value, protocol="full", task="rec", metric="hr@10")
        assert r["base"] and r["mean"] == pytest.approx((0.30 + 0.34) / 2 * 0.5)
        assert r["std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert row("gate", "fixed0.25", task="search", metric="hr@10")["mean"] == pytest.approx(0.84)

    md = (sweep_table / "sensitivity.md").read_text()
    assert "sampled protocol" in md and "full protocol" in md and "| rank | 8 (base) |" in md
    assert "0.2300 ± 0.0424" in md and "gate fixed0.25 = gate fixed, gate_rec_weight 0.25" in md
    tex = (sweep_table / "sensitivity.tex").read_text()
    assert r"\toprule" in tex and r"0.2300 $\pm$ 0.0424" in tex and "gate\\_rec\\_weight" in tex


def test_sensitivity_figure_per_dataset_and_backbone(sweep_table, tmp_path):
    written = sensitivity_figures(pd.read_csv(sweep_table / "sensitivity.csv"), tmp_path / "figures" / "sensitivity")
    assert sorted(p.name for p in written) == ["sensitivity_ml100k_tiny_llama.pdf", "sensitivity_ml100k_tiny_llama.png"]
    assert all(p.stat().st_size > 1000 for p in written)


# --- DAG (dry runs) ----------------------------------------------------------------------------------------
def dry_run(work: Path, configfile: str, *targets: str) -> list[dict]:
    """The jobs a forced dry run would run, as {rule, wildcard: value} dicts."""
    r = subprocess.run([*SNAKEMAKE, "--directory", str(work), "--configfile", str(ROOT / "config" / configfile),
                        "--config", f"results_dir={work / 'results'}", "-n", "--forceall", *targets],
                       capture_output=True, text=True, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    jobs = []
    for line in r.stdout.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            jobs.append({"rule": m.group(1)})
        elif line.strip().startswith("wildcards:") and jobs:
            jobs[-1].update(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
    return jobs


def test_test_config_dag_has_the_sweep_jobs(tmp_path):
    jobs = dry_run(tmp_path, "test.yaml", "sensitivity_table")
    trains = sorted(j["run"] for j in jobs if j["rule"] == "train")
    assert trains == ["gems", "gems~gate-fixed0.25", "gems~rank-4"]
    assert sorted(j["run"] for j in jobs if j["rule"] == "evaluate") == trains
    assert {j["rule"] for j in jobs} >= {"sensitivity_table", "knowledge_space"}
    # the figure also draws the base run's seed band from the main table, so it needs the main grid
    figure_jobs = {j["rule"] for j in dry_run(tmp_path, "test.yaml", "sensitivity_figures")}
    assert figure_jobs >= {"sensitivity_table", "sensitivity_figures", "main_table"}


def test_default_config_adds_exactly_ten_gems_train_jobs(tmp_path):
    cfg = config("default.yaml")
    sweep = [j for j in dry_run(tmp_path, "default.yaml", "sensitivity_table") if j["rule"] == "train"]
    assert sorted((j["run"], j["seed"]) for j in sweep) == sorted([(r, "42") for r in DEFAULT_SWEEP] + [("gems", "42")])
    main = [j for j in dry_run(tmp_path, "default.yaml", "main_table", "sensitivity_table") if j["rule"] == "train"]
    extra = [j for j in main if "~" in j["run"]]
    assert len(main) == len(runs(cfg)) + 10 and sorted(j["run"] for j in extra) == sorted(DEFAULT_SWEEP)
    assert {j["seed"] for j in extra} == {"42"}
