"""Result tables: collect evaluation summaries into tidy long tables and render them."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TASK_LABEL = {"search": "Search", "rec": "Recommendation"}


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


def markdown_table(summary: pd.DataFrame, metrics: list[str], title: str) -> str:
    """Methods as rows, (task, metric) as columns; best mean per column in bold; mean ± std over seeds."""
    sub = summary[summary["metric"].isin(metrics)]
    runs = list(dict.fromkeys(sub["label"]))
    cols = [(t, m) for t in ("search", "rec") for m in metrics if ((sub["task"] == t) & (sub["metric"] == m)).any()]
    best = {c: sub[(sub["task"] == c[0]) & (sub["metric"] == c[1])]["mean"].max() for c in cols}
    seeds = int(sub["seeds"].max()) if len(sub) else 0
    head = "| Method | " + " | ".join(f"{TASK_LABEL[t]} {m.upper().replace('@', '@')}" for t, m in cols) + " |"
    lines = [f"**{title}** (mean{' ± std over ' + str(seeds) + ' seeds' if seeds > 1 else ', 1 seed'})", "",
             head, "|" + "---|" * (len(cols) + 1)]
    for run in runs:
        cells = []
        for t, m in cols:
            r = sub[(sub["label"] == run) & (sub["task"] == t) & (sub["metric"] == m)]
            if r.empty:
                cells.append("–")
                continue
            mean, std = float(r["mean"].iloc[0]), float(r["std"].iloc[0])
            text = f"{mean:.4f}" + (f" ± {std:.4f}" if seeds > 1 else "")
            cells.append(f"**{text}**" if mean == best[(t, m)] else text)
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
