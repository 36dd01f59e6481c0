"""Print the README's one-seed result table of a published run from its tables (nothing typed by hand).

    python scripts/readme_table.py results/published/default/tables

Columns: sampled NDCG@10 / HR@10 of each task (NDCG with the significance marker the pipeline wrote against
GEMS), full-protocol NDCG@10 of each task, seconds per training step and training targets per second
(``efficiency.csv``). Means as the tables hold them; for a multi-seed run the reference tables
(``main.md``) give mean ± std instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

HEADER = ("| Method | Search NDCG@10 | Search HR@10 | Rec NDCG@10 | Rec HR@10 | Search NDCG@10 (full) "
          "| Rec NDCG@10 (full) | s/step | targets/s |")


def metric_cell(main: pd.DataFrame, run: str, protocol: str, task: str, metric: str, marker: bool) -> str:
    row = main[(main.run == run) & (main.protocol == protocol) & (main.task == task) & (main.metric == metric)]
    if row.empty:
        return ""
    r = row.iloc[0]
    mark = r["marker"] if marker and isinstance(r["marker"], str) else ""
    return f"{r['mean']:.3f}{mark}"


def cost_cell(eff: pd.DataFrame, run: str, quantity: str, fmt: str) -> str:
    row = eff[(eff.run == run) & (eff.quantity == quantity)]
    return "" if row.empty or pd.isna(row["mean"].iloc[0]) else fmt.format(row["mean"].iloc[0])


def table(tables: Path) -> str:
    main = pd.read_csv(tables / "main.csv")
    eff = pd.read_csv(tables / "efficiency.csv")
    lines = [HEADER, "|" + "---|" * 9]
    for run in dict.fromkeys(main["run"]):
        label = main.loc[main.run == run, "label"].iloc[0]
        cells = [metric_cell(main, run, "sampled", "search", "ndcg@10", True),
                 metric_cell(main, run, "sampled", "search", "hr@10", False),
                 metric_cell(main, run, "sampled", "rec", "ndcg@10", True),
                 metric_cell(main, run, "sampled", "rec", "hr@10", False),
                 metric_cell(main, run, "full", "search", "ndcg@10", False),
                 metric_cell(main, run, "full", "rec", "ndcg@10", False),
                 cost_cell(eff, run, "seconds_per_step", "{:.2f}"),
                 cost_cell(eff, run, "targets_per_second", "{:.0f}")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", type=Path, help="a published run's tables folder, e.g. results/published/default/tables")
    args = p.parse_args()
    missing = [n for n in ("main.csv", "efficiency.csv") if not (args.tables / n).exists()]
    if missing:
        sys.exit(f"error: {args.tables} has no {', '.join(missing)}; pass a published run's tables folder "
                 "(results/published/default/tables)")
    sys.stdout.write(table(args.tables))
