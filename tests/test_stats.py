"""Significance tests (gemsbench.analysis.significance) against hand-computed values, pairing errors, and the table markers."""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gemsbench.analysis.main import seed_summary, significance_note, with_markers
from gemsbench.analysis.render import latex_table, markdown_table
from gemsbench.analysis.significance import PairingError, holm, load_rows, paired_tests, significance_table

ROOT = Path(__file__).resolve().parent.parent


def rows_for(run, values_by_task, seed=1, dataset="d", backbone="b", protocol="sampled", metric="ndcg@10"):
    """Per-example rows of one run and seed: {task: [value per example]} with example ids 0..n-1 per task."""
    frames = [pd.DataFrame({"example_id": np.arange(len(v)), "user": np.arange(len(v)), "task": task,
                            "protocol": protocol, metric: np.asarray(v, dtype="float32")})
              for task, v in values_by_task.items()]
    return pd.concat(frames).assign(dataset=dataset, backbone=backbone, run=run, seed=seed)


# --- the tests themselves, by hand -------------------------------------------------------------------------
def test_paired_t_matches_hand_computation():
    # differences 1, 0, 1, 0: mean 1/2, sd sqrt(1/3), t = 0.5 / (sqrt(1/3) / 2) = sqrt(3) with 3 df;
    # the t(3) CDF at sqrt(3) is 3/4 + 1/(2 pi), so the two-sided p is 1/2 - 1/pi
    r = paired_tests([1, 0, 1, 1], [0, 0, 0, 1])
    assert r["t_stat"] == pytest.approx(math.sqrt(3))
    assert r["t_p"] == pytest.approx(0.5 - 1 / math.pi)


def test_wilcoxon_matches_exact_enumeration_and_drops_zero_differences():
    # |d| ranks 1..5, negative rank sum 3; of the 2^5 sign patterns, 5 have a rank sum <= 3 ({}, {1}, {2}, {3},
    # {1,2}), so the exact two-sided p = 10/32. A zero difference is dropped (zero_method="wilcox"), not ranked.
    diffs = np.array([1, 2, -3, 4, 5, 0.0])
    r = paired_tests(diffs, np.zeros_like(diffs))
    assert r["wilcoxon_stat"] == 3.0
    assert r["wilcoxon_p"] == pytest.approx(10 / 32)


def test_all_zero_differences_give_p_one():
    r = paired_tests([0.5, 0.0, 1.0], [0.5, 0.0, 1.0])
    assert r == {"t_stat": 0.0, "t_p": 1.0, "wilcoxon_stat": 0.0, "wilcoxon_p": 1.0}


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


# --- the significance table ----------------------------------------------------------------------------------
@pytest.fixture
def three_runs():
    """gems beats `weak` clearly, loses to `strong` clearly, ties `twin`; two tasks, 20 examples each, 2 seeds."""
    rng = np.random.default_rng(0)
    base = {t: rng.uniform(0.3, 0.7, 20) for t in ("search", "rec")}
    frames = []
    for seed in (1, 2):
        noise = {t: rng.normal(0, 0.01, 20) for t in base}
        frames += [rows_for("gems", {t: base[t] + noise[t] for t in base}, seed),
                   rows_for("weak", {t: base[t] - 0.2 + rng.normal(0, 0.02, 20) for t in base}, seed),
                   rows_for("strong", {t: base[t] + 0.2 + rng.normal(0, 0.02, 20) for t in base}, seed),
                   rows_for("twin", {t: base[t] + noise[t] for t in base}, seed)]
    return pd.concat(frames, ignore_index=True)


def test_family_is_baselines_times_metrics_per_task_and_markers_follow_holm_t(three_runs):
    rows = three_runs.assign(**{"hr@10": (three_runs["ndcg@10"] > 0.5).astype("float32")})
    sig = significance_table(rows, "gems", ["ndcg@10", "hr@10"])
    assert len(sig) == 2 * 3 * 2  # tasks x baselines x metrics
    for _, fam in sig.groupby("task"):
        assert (fam["family_size"] == 6).all()
        assert fam["t_p_holm"].to_numpy() == pytest.approx(holm(fam["t_p"].to_numpy()))
        assert fam["wilcoxon_p_holm"].to_numpy() == pytest.approx(holm(fam["wilcoxon_p"].to_numpy()))
    nd = sig[sig["metric"] == "ndcg@10"].set_index(["task", "run"])
    assert set(nd.loc[(slice(None), "weak"), "marker"]) == {"†"}
    assert set(nd.loc[(slice(None), "strong"), "marker"]) == {"‡"}
    assert set(nd.loc[(slice(None), "twin"), "marker"]) == {""}
    assert (nd.loc[(slice(None), "twin"), "t_p"] == 1.0).all()


def test_values_are_averaged_over_seeds_per_example_before_pairing(three_runs):
    sig = significance_table(three_runs, "gems", ["ndcg@10"]).set_index(["task", "run"])
    per_example = three_runs.astype({"ndcg@10": float}).groupby(["run", "task", "example_id"])["ndcg@10"].mean()
    a, b = per_example.loc["gems", "rec"].to_numpy(), per_example.loc["weak", "rec"].to_numpy()
    row = sig.loc[("rec", "weak")]
    assert row["seeds_reference"] == 2 and row["n_pairs"] == 20
    assert row["mean_diff"] == pytest.approx(a.mean() - b.mean())
    assert row["rel_improvement"] == pytest.approx((a.mean() - b.mean()) / b.mean())
    assert row["t_p"] == pytest.approx(paired_tests(a, b)["t_p"])


def test_mismatched_examples_are_a_clear_error(three_runs):
    rows = three_runs.drop(three_runs[(three_runs["run"] == "weak") & (three_runs["example_id"] == 7)].index)
    with pytest.raises(PairingError, match=r"cannot pair 'weak' with 'gems'.*only in 'gems' \(e.g. \[7\]\)"):
        significance_table(rows, "gems", ["ndcg@10"])


def test_a_seed_missing_examples_is_a_clear_error(three_runs):
    gone = (three_runs["run"] == "gems") & (three_runs["seed"] == 2) & (three_runs["example_id"] == 3)
    with pytest.raises(PairingError, match="run 'gems'.*missing from some of its 2 seeds"):
        significance_table(three_runs[~gone], "gems", ["ndcg@10"])


def test_duplicated_example_is_a_clear_error(three_runs):
    with pytest.raises(PairingError, match="more than once"):
        significance_table(pd.concat([three_runs, three_runs.iloc[:1]]), "gems", ["ndcg@10"])


def test_unknown_reference_names_the_runs(three_runs):
    with pytest.raises(ValueError, match=r"reference run 'nope'.*\['gems', 'strong', 'twin', 'weak'\]"):
        significance_table(three_runs, "nope", ["ndcg@10"])


def test_any_run_can_be_the_reference(three_runs):
    sig = significance_table(three_runs, "weak", ["ndcg@10"])
    assert set(sig["run"]) == {"gems", "strong", "twin"} and set(sig["marker"]) == {"‡"}


def test_load_rows_takes_the_run_from_the_summary_beside_the_rows(tmp_path, three_runs):
    eval_dir = tmp_path / "anywhere"
    eval_dir.mkdir()
    one = three_runs[(three_runs["run"] == "weak") & (three_runs["seed"] == 2)]
    one.drop(columns=["dataset", "backbone", "run", "seed"]).to_parquet(eval_dir / "test_rows.parquet")
    (eval_dir / "test_summary.json").write_text(json.dumps({"dataset": "d", "backbone": "b", "run": "weak",
                                                            "seed": 2}))
    loaded = load_rows([eval_dir / "test_rows.parquet"])
    assert (loaded["run"] == "weak").all() and (loaded["seed"] == 2).all() and len(loaded) == len(one)
    (eval_dir / "test_summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="test_summary.json is missing"):
        load_rows([eval_dir / "test_rows.parquet"])


# --- markers in the main table ------------------------------------------------------------------------------
def test_main_table_cells_carry_markers_bold_best_and_latex(three_runs):
    sig = significance_table(three_runs, "gems", ["ndcg@10"])
    long = (three_runs.astype({"ndcg@10": float}).groupby(["dataset", "backbone", "protocol", "run", "task", "seed"])
            ["ndcg@10"].mean().rename("value").reset_index()
            .assign(metric="ndcg@10", method=lambda d: d["run"], label=lambda d: d["run"].str.replace("weak", "w_1")))
    summary = with_markers(seed_summary(long), sig)
    note = significance_note(sig, {"gems": "GEMS"})
    md = markdown_table(summary, ["ndcg@10"], "d · b · sampled protocol · test split", note)
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "†" in lines["w_1"] and "‡" not in lines["w_1"]
    assert lines["strong"].count("**") == 4 and lines["strong"].count("‡") == 2  # best in both tasks, and worse
    assert "±" in lines["gems"] and "†" not in lines["gems"] and "‡" not in lines["gems"]
    assert "GEMS significantly better / worse" in md and "Holm" in md
    tex = latex_table(summary, ["ndcg@10"], "d · b · sampled protocol · test split", note)
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\multicolumn{1}{c}{Search}" in tex
    assert r"w\_1 &" in tex and r"$^{\dagger}$" in tex and r"\textbf{" in tex and r"$\pm$" in tex


def test_significance_cli_without_the_reference_run_writes_an_empty_table(tmp_path, caplog):
    from gemsbench.cli.aggregate import run
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["tables"] = {"reference": "no_such_run"}  # a reference run the config does not have
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run(argparse.Namespace(config=str(tmp_path / "c.yaml"), table="significance", rows=[], out_dir=str(tmp_path)))
    out = tmp_path / "significance.csv"
    table = pd.read_csv(out)
    assert table.empty and {"t_p_holm", "wilcoxon_p_holm", "marker"} <= set(table.columns)
    assert "reference run 'no_such_run' is not in this config" in caplog.text


def test_aggregate_cli_writes_marked_main_table_in_markdown_csv_and_latex(tmp_path):
    from gemsbench.cli.aggregate import run
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    summaries = []
    for run_name, value in (("full_ft", 0.4), ("lora", 0.2)):
        path = tmp_path / f"{run_name}.json"
        metrics = {"sampled": {t: {"ndcg@10": value, "n": 5} for t in ("search", "rec")}}
        path.write_text(json.dumps({"dataset": "d", "backbone": "b", "run": run_name, "method": run_name, "seed": 1,
                                    "metrics": metrics}))
        summaries.append(str(path))
    sig = pd.DataFrame({"dataset": "d", "backbone": "b", "protocol": "sampled", "task": ["search", "rec"],
                        "metric": "ndcg@10", "reference": "full_ft", "run": "lora", "alpha": 0.05,
                        "marker": ["†", None]})
    sig.to_csv(tmp_path / "sig.csv", index=False)
    out = tmp_path / "tables"
    run(argparse.Namespace(config=str(tmp_path / "c.yaml"), table="main", summaries=summaries, out_dir=str(out),
                           significance=[str(tmp_path / "sig.csv")]))
    marks = pd.read_csv(out / "main.csv", keep_default_na=False).set_index(["run", "task", "metric"])["marker"]
    assert marks[("lora", "search", "ndcg@10")] == "†" and marks[("lora", "rec", "ndcg@10")] == ""
    assert "0.2000†" in (out / "main.md").read_text()
    tex = (out / "main.tex").read_text()
    assert r"0.2000$^{\dagger}$" in tex and r"\textbf{0.4000}" in tex and "test split" in tex
