"""Figures from small synthetic CSVs (gemsbench.figures via its CLI), the colour mapping, and the collectors of
the efficiency and gradient-conflict tables that feed them."""
import argparse
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from matplotlib.image import imread

from gemsbench.cli.figures import run as draw
from gemsbench.figures import COLUMN_WIDTH_IN, METHOD_COLOURS, PNG_DPI, method_colour
from gemsbench.analysis.ablation import ablation_summary
from gemsbench.analysis.conflict import collect_conflict, collect_layer_conflict, conflict_markdown
from gemsbench.analysis.efficiency import collect_efficiency, efficiency_markdown, efficiency_summary

RUNS = [("gems", "GEMS", "gems"), ("lora", "LoRA", "lora"), ("popularity", "Popularity", "popularity")]


def figure_args(out_dir, **csvs):
    defaults = {"metric": "ndcg@10", "main": None, "efficiency": None, "conflict": None, "conflict_summary": None,
                "conflict_layers": None, "retention": None, "convergence": None, "sensitivity": [],
                "sensitivity_main": None}
    return argparse.Namespace(out_dir=str(out_dir), **{**defaults, **csvs})


def assert_figure(stem):
    pdf, png = stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    image = imread(png)
    assert image.shape[1] == round(COLUMN_WIDTH_IN * PNG_DPI)  # one paper column wide
    assert image[..., :3].std() > 0  # something was drawn


@pytest.fixture
def tables(tmp_path):
    main = pd.DataFrame([{"dataset": "d", "backbone": "b", "protocol": p, "run": r, "label": lab, "method": m,
                          "task": t, "metric": "ndcg@10", "mean": 0.1 + 0.1 * i, "std": 0.01, "seeds": 3}
                         for p in ("sampled", "full") for i, (r, lab, m) in enumerate(RUNS) for t in ("search", "rec")])
    eff = pd.DataFrame([{"dataset": "d", "backbone": "b", "device": "cpu", "run": r, "label": lab, "method": m,
                         "quantity": q, "mean": v, "std": 0.1 * v, "seeds": 3}
                        for r, lab, m in RUNS[:2] for q, v in (("seconds_per_step", 1.5), ("peak_memory_bytes", 2e9))])
    steps = pd.DataFrame([{"dataset": "d", "backbone": "b", "run": r, "label": lab, "method": m, "seed": s,
                           "step": k, "cos_rec_search": (-1) ** k * 0.1 + 0.01 * s}
                          for r, lab, m in RUNS[:2] for s in (1, 2) for k in range(30)])
    per_run = pd.DataFrame([{"dataset": "d", "backbone": "b", "run": r, "label": lab, "method": m,
                             "seeds_logged": 2, "steps_logged": 60, "negative_fraction": 0.5,
                             "negative_fraction_std": 0.05, "mean_cosine": 0.01} for r, lab, m in RUNS[:2]])
    sweep = pd.DataFrame([{"param": "rank", "value": v, "task": t, "metric": "ndcg@10", "mean": 0.2 + 0.01 * i,
                           "std": 0.01} for i, v in enumerate((4, 16, 64, 512)) for t in ("search", "rec")] +
                         [{"param": "side", "value": v, "task": t, "metric": "ndcg@10", "mean": 0.3, "std": 0.02}
                          for v in ("input", "output") for t in ("search", "rec")])
    layers = pd.DataFrame([{"dataset": "d", "backbone": "b", "run": r, "label": lab, "method": m,
                            "layer": f"model.layers.{k}.{kind}", "layer_type": kind.rsplit(".", 1)[-1], "depth": k,
                            "mean_cosine": 0.1 * k - 0.2, "negative_fraction": 0.5, "n": 6}
                           for r, lab, m in RUNS[:2] for k in range(4)
                           for kind in ("self_attn.q_proj", "mlp.down_proj")])
    paths = {}
    for name, df in (("main", main), ("efficiency", eff), ("conflict", steps), ("conflict_summary", per_run),
                     ("sweep_rank", sweep), ("conflict_layers", layers)):
        paths[name] = tmp_path / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


def test_every_figure_is_written_as_pdf_and_png_from_csvs(tmp_path, tables):
    out = tmp_path / "figures"
    written = draw(figure_args(out, main=tables["main"], efficiency=tables["efficiency"], conflict=tables["conflict"],
                               conflict_summary=tables["conflict_summary"], conflict_layers=tables["conflict_layers"],
                               sensitivity=[tables["sweep_rank"]]))
    stems = ["main_d_b_sampled", "main_d_b_full", "efficiency_d_b", "conflict_d_b", "conflict_layers_d_b",
             "sweep_rank"]
    assert sorted(p.name for p in written) == sorted(f"{s}.{e}" for s in stems for e in ("pdf", "png"))
    for stem in stems:
        assert_figure(out / stem)


def test_conflict_figure_says_so_when_no_cosine_was_logged(tmp_path, tables):
    per_run = pd.read_csv(tables["conflict_summary"]).assign(steps_logged=0, negative_fraction=float("nan"))
    per_run.to_csv(tables["conflict_summary"], index=False)
    pd.read_csv(tables["conflict"]).iloc[:0].to_csv(tables["conflict"], index=False)
    draw(figure_args(tmp_path, conflict=tables["conflict"], conflict_summary=tables["conflict_summary"]))
    assert_figure(tmp_path / "conflict_d_b")


def test_bad_figure_requests_are_clear_errors(tmp_path, tables):
    with pytest.raises(ValueError, match="--conflict and --conflict-summary go together"):
        draw(figure_args(tmp_path, conflict=tables["conflict"]))
    with pytest.raises(ValueError, match="metric 'mrr@5' is not in the table"):
        draw(figure_args(tmp_path, main=tables["main"], metric="mrr@5"))
    with pytest.raises(ValueError, match="no table given"):
        draw(figure_args(tmp_path))


def test_colour_mapping_is_fixed_and_stable_across_processes():
    assert method_colour("gems") == METHOD_COLOURS["gems"] == "#D55E00"
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS)  # no two methods share a colour
    # an unlisted method gets the same colour in another process with another string-hash seed
    code = "from gemsbench.figures import method_colour; print(method_colour('my_new_method'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert other == method_colour("my_new_method")


def write_run(root, run, method, seed, summary_extra, log_entries=None):
    run_dir = root / run / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"dataset": "d", "backbone": "b", "run": run, "method": method,
                                                      "seed": seed, **summary_extra}))
    if log_entries is not None:
        (run_dir / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log_entries))
    return run_dir / "summary.json"


def test_conflict_collector_counts_negative_cosines_per_seed(tmp_path):
    def log(cosines):  # validation-only and per-task-gradient-free steps carry no cosine
        return [{"step": k, "loss_rec": 1.0} if c is None else {"step": k, "cos_rec_search": c}
                for k, c in enumerate(cosines)]
    paths = [write_run(tmp_path, "gems", "gems", 1, {}, log([-0.2, 0.1, None, -0.1, 0.3])),  # 2 of 4 negative
             write_run(tmp_path, "gems", "gems", 2, {}, log([-0.2, 0.1, 0.2, 0.3])),  # 1 of 4
             write_run(tmp_path, "popularity", "popularity", 1, {})]  # no log at all
    per_step, per_run = collect_conflict(paths, {"gems": "GEMS"})
    assert len(per_step) == 8 and set(per_step["label"]) == {"GEMS"}
    gems = per_run.set_index("run").loc["gems"]
    assert gems["steps_logged"] == 8 and gems["seeds_logged"] == 2
    assert gems["negative_fraction"] == pytest.approx((0.5 + 0.25) / 2)
    assert gems["negative_fraction_std"] == pytest.approx(pd.Series([0.5, 0.25]).std())
    assert gems["mean_cosine"] == pytest.approx(0.5 / 8)
    assert per_run.set_index("run").loc["popularity", "steps_logged"] == 0


def test_efficiency_table_converts_units_and_leaves_missing_quantities_blank(tmp_path):
    costs = {"trainable_parameters": 2_000_000, "optimizer_state_bytes": 3 * 2 ** 20, "peak_memory_bytes": 2 ** 31,
             "seconds_per_step": 1.25, "targets_per_second": 40.0, "tokens_per_second": 150.0, "mfu": 0.4,
             "train_seconds": 600.0, "device": "cpu",
             "units": 63, "spec": {"train": {"batch_size": 8, "grad_accum": 2}}}  # 4 steps per epoch
    paths = [write_run(tmp_path, "lora", "lora", 1, costs),
             write_run(tmp_path, "gems", "gems", 1, {**costs, "seconds_per_step": 2.5}),
             # DoRA is a run of method "lora" too: the reference stays the run named lora
             write_run(tmp_path, "dora", "lora", 1, {**costs, "seconds_per_step": 5.0}),
             write_run(tmp_path, "popularity", "popularity", 1, {"trainable_parameters": 0, "train_seconds": 0.0})]
    summary = efficiency_summary(collect_efficiency(paths, {"lora": "LoRA"}))
    md = efficiency_markdown(summary, "Training cost · d · b · cpu")
    # time per epoch: 4 steps × 1.25 s = 5 s = 0.083 min; GEMS's step takes 2× LoRA's
    assert "| LoRA | 2.00 | 3.0 | 2.00 | 1.25 | 1.00 | 0.1 | 40.0 | 150 | 0.40 | 10.0 |" in md
    assert "| gems | 2.00 | 3.0 | 2.00 | 2.50 | 2.00 | 0.2 | 40.0 | 150 | 0.40 | 10.0 |" in md
    assert "| dora | 2.00 | 3.0 | 2.00 | 5.00 | 4.00 | 0.3 | 40.0 | 150 | 0.40 | 10.0 |" in md
    assert "| popularity | 0.00 | – | – | – | – | – | – | – | – | 0.0 |" in md


def test_per_layer_and_subspace_conflict_from_the_logs(tmp_path):
    q, d = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"
    log1 = [{"step": 0, "cos_rec_search": -0.2, "cos_layers": {q: -0.5, d: 0.1}, "cos_shared": -0.1, "cos_task": 0.3},
            {"step": 1},  # not a conflict step
            {"step": 2, "cos_rec_search": 0.4, "cos_layers": {q: 0.3, d: 0.2}, "cos_shared": 0.2, "cos_task": -0.1}]
    log2 = [{"step": 0, "cos_rec_search": 0.1, "cos_layers": {q: -0.1, d: -0.3}}]  # no subspace cosines (not GEMS)
    paths = [write_run(tmp_path, "gems", "gems", 1, {}, log1), write_run(tmp_path, "lora", "lora", 1, {}, log2)]
    layers = collect_layer_conflict(paths, {"gems": "GEMS"}).set_index(["run", "layer"])
    assert layers.loc[("gems", q), "mean_cosine"] == pytest.approx(-0.1)
    assert layers.loc[("gems", q), "negative_fraction"] == pytest.approx(0.5)
    assert layers.loc[("gems", d), "n"] == 2 and layers.loc[("lora", d), "negative_fraction"] == 1.0
    assert layers.loc[("gems", d), "layer_type"] == "down_proj" and layers.loc[("gems", d), "depth"] == 1
    per_step, per_run = collect_conflict(paths, {"gems": "GEMS"})
    gems = per_run.set_index("run").loc["gems"]
    assert gems["negative_fraction_shared"] == 0.5 and gems["negative_fraction_task"] == 0.5
    assert pd.isna(per_run.set_index("run").loc["lora", "negative_fraction_shared"])
    md = conflict_markdown(per_run, "t")
    assert "| GEMS | 2 | 0.50 | 0.100 | 0.50 | 0.50 |" in md and "| lora | 1 | 0.00 | 0.100 | – | – |" in md


def test_ablation_rows_name_the_components_each_keeps():
    summary = pd.DataFrame([{"dataset": "d", "backbone": "b", "protocol": "sampled", "run": m, "label": m.upper(),
                             "method": m, "task": "rec", "metric": "ndcg@10", "mean": 0.1, "std": 0.0, "seeds": 1}
                            for m in ("lora", "galore", "gems", "gems_no_msd", "gems_no_nsp")])
    out = ablation_summary(summary)
    assert list(out["method"]) == ["gems", "gems_no_nsp", "gems_no_msd", "galore"]  # lora is no ablation
    assert list(out["label"]) == ["GEMS (MSD yes, NSP yes)", "GEMS_NO_NSP (MSD yes, NSP no)",
                                  "GEMS_NO_MSD (MSD no, NSP yes)", "GALORE (MSD no, NSP no)"]
    with pytest.raises(ValueError, match="needs GEMS and its ablations"):
        ablation_summary(summary[summary["method"] == "lora"])


def test_sensitivity_panels_of_one_metric_share_a_y_range_that_holds_the_base_band():
    from gemsbench.figures import _band_rows, _shared_ylims

    sweep = pd.DataFrame({"param": ["rank", "rank", "scale", "scale"], "value": ["4", "8", "1", "2"],
                          "task": "rec", "metric": "ndcg@10", "mean": [0.2, 0.3, 0.25, 0.5],
                          "std": [0.0, 0.1, 0.0, 0.0]})
    band = _band_rows(pd.DataFrame({"task": ["rec", "search"], "metric": "ndcg@10", "mean": [0.1, 0.9],
                                    "std": [0.05, 0.01], "seeds": [3, 3]}), ["rec"])
    assert band == {("rec", "ndcg@10"): (0.1, 0.05)}  # the search rows belong to no drawn task
    low, high = _shared_ylims(sweep, band)["ndcg@10"]
    assert low < 0.05 and high > 0.5 and high - low < 0.5  # base band (0.05) to the highest curve (0.5), 5 % margin
    one_seed = pd.DataFrame({"task": ["rec"], "metric": "ndcg@10", "mean": [0.1], "std": [0.0], "seeds": [1]})
    assert _band_rows(one_seed, ["rec"]) == {}  # one seed has no spread to show


def test_sensitivity_figure_draws_the_base_runs_band_from_the_main_table(tmp_path):
    from gemsbench.cli.figures import base_rows, build_parser, run as draw_cli

    sweep = pd.DataFrame({"dataset": "d", "backbone": "b", "protocol": "sampled", "param": "rank",
                          "value": [64, 128, 256], "base": [False, True, False], "task": "rec", "metric": "ndcg@10",
                          "mean": [0.2, 0.21, 0.22], "std": 0.0, "n_seeds": 1,
                          "run": ["gems~rank-64", "gems", "gems~rank-256"]})
    main = pd.DataFrame({"dataset": "d", "backbone": "b", "protocol": ["sampled", "full"], "run": "gems",
                         "task": "rec", "metric": "ndcg@10", "mean": [0.21, 0.1], "std": [0.01, 0.02], "seeds": 3})
    rows = base_rows(main, sweep, "d", "b", "sampled")
    assert rows["protocol"].tolist() == ["sampled"] and rows["std"].tolist() == [0.01]
    sweep.to_csv(tmp_path / "sensitivity.csv", index=False)
    main.to_csv(tmp_path / "main.csv", index=False)
    written = draw_cli(build_parser().parse_args(["--out-dir", str(tmp_path / "fig"), "--sensitivity",
                                                  str(tmp_path / "sensitivity.csv"), "--sensitivity-main",
                                                  str(tmp_path / "main.csv")]))
    assert sorted(p.name for p in written) == ["sensitivity_d_b.pdf", "sensitivity_d_b.png"]


def test_ratio_ticks_stay_short():
    from gemsbench.figures import _times

    assert [_times(v) for v in (0.9, 1.0, 1.1, 10.0, 100.0, 1000.0)] == \
        ["0.9", "1", "1.1", "10", "10$^{2}$", "10$^{3}$"]
