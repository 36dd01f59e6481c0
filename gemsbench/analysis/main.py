"""The main results table: evaluation summaries -> mean ± std over seeds of every metric per dataset, backbone,
protocol, run and task (``main.csv``, per seed ``main_per_seed.csv``; ``main.md`` / ``main.tex`` show
``tables.metrics``), with the † / ‡ markers of the significance table when it is given."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .table import Table
from .render import labels as run_labels
from .render import metric_tables, write_csv


def collect(summary_paths: list[Path], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Long table: dataset, backbone, protocol, run, label, method, task, seed, metric, value."""
    rows = []
    for path in summary_paths:
        s = json.loads(Path(path).read_text())
        for protocol, tasks in s["metrics"].items():
            for task, metrics in tasks.items():
                for metric, value in metrics.items():
                    if metric == "n":
                        continue
                    rows.append({"dataset": s["dataset"], "backbone": s["backbone"], "protocol": protocol,
                                 "run": s["run"], "label": (labels or {}).get(s["run"], s["run"]),
                                 "method": s["method"], "task": task, "seed": s["seed"], "metric": metric,
                                 "value": value, "n_examples": metrics["n"]})
    if not rows:
        raise ValueError("no evaluation summaries to aggregate")
    return pd.DataFrame(rows)


def seed_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and number of seeds per (dataset, backbone, protocol, run, task, metric)."""
    keys = ["dataset", "backbone", "protocol", "run", "label", "method", "task", "metric"]
    g = long.groupby(keys, sort=False)["value"]
    out = g.agg(mean="mean", std="std", seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def with_markers(summary: pd.DataFrame, significance: pd.DataFrame) -> pd.DataFrame:
    """``summary`` plus a ``marker`` column (``†``/``‡``/empty) from a significance CSV (analysis.significance)."""
    keys = ["dataset", "backbone", "protocol", "run", "task", "metric"]
    out = summary.merge(significance[keys + ["marker"]], on=keys, how="left")
    out["marker"] = out["marker"].fillna("")
    return out


def significance_note(significance: pd.DataFrame, labels: dict[str, str]) -> str:
    """One sentence saying what the markers mean, naming the reference, the test, the family and alpha."""
    if significance.empty:
        return ""
    ref = significance["reference"].iloc[0]
    alpha = significance["alpha"].iloc[0]
    return (f"† / ‡: {labels.get(ref, ref)} significantly better / worse than this method (two-sided paired "
            f"t-test over evaluation examples, values averaged over seeds; Holm-adjusted over the baselines × metrics "
            f"of each task; p < {alpha:g}). Wilcoxon signed-rank p-values: significance.csv.")


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    labels = run_labels(config)
    long = collect(inputs["summaries"], labels)
    summary = seed_summary(long)
    note = ""
    if inputs.get("significance"):
        sig = pd.read_csv(inputs["significance"][0])
        summary, note = with_markers(summary, sig), significance_note(sig, labels)
    write_csv(long, out / "main_per_seed.csv")
    write_csv(summary, out / "main.csv")
    metric_tables(config, summary, out / "main", "", note)
    return f"main table: {out / 'main.md'} (CSV: {out / 'main.csv'}, LaTeX: {out / 'main.tex'})"


TABLE = Table(name="main", inputs={"summaries": "evaluation", "significance": "significance/significance.csv"},
              outputs=("main.md", "main.csv", "main.tex", "main_per_seed.csv"), make=make,
              config_keys=("methods", "tables"), optional=frozenset({"significance"}), report="main.csv")
