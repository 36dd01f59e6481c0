"""The sensitivity table: evaluation summaries of the sweep runs (and of the base entry's main-grid runs, which
stand for its own setting) -> mean and std over seeds per grid point, task, metric and protocol.

The grid and its run names come from the config (:func:`gemsbench.config.sweep_points`); rendered as CSV,
Markdown and LaTeX (booktabs): ``sensitivity.{csv,md,tex}``.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import pandas as pd

from ..config import SweepPoint, sensitivity_seeds, sweep_points
from .table import Table
from .render import PROTOCOL_ORDER, TASK_LABEL, TASK_ORDER, latex_document, latex_escape, seeds_phrase, write_csv
from .render import write_text

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "backbone", "protocol", "param", "value", "base", "task", "metric", "mean", "std", "n_seeds",
           "run"]


def sensitivity_table(config: dict, summary_paths: list[Path]) -> pd.DataFrame:
    """One row per (dataset, backbone, protocol, grid point, task, metric): mean, sample std (0 for one seed)
    and number of seeds of the metric over the sweep seeds.

    Summaries of runs outside the grid or of other seeds are skipped, so every evaluation summary may be
    passed; the base entry's run fills the base point of every grid key. Rows follow the grid's order (points
    as :func:`sweep_points` orders them), then task, metric (``sensitivity.metrics``) and protocol."""
    points = sweep_points(config)
    if not points:
        raise ValueError("the config has no sensitivity grid (`sensitivity.grid`): nothing to tabulate")
    metrics = config["sensitivity"]["metrics"]
    seeds = set(sensitivity_seeds(config))
    by_run: dict[str, list[tuple[int, SweepPoint]]] = defaultdict(list)
    for i, point in enumerate(points):
        by_run[point.run].append((i, point))
    rows, seen = [], set()
    for path in map(Path, summary_paths):
        s = json.loads(path.read_text())
        if s["run"] not in by_run or s["seed"] not in seeds:
            log.debug("skipping %s: not a sensitivity point of seeds %s", path, sorted(seeds))
            continue
        seen.add(s["run"])
        for order, point in by_run[s["run"]]:
            for protocol, tasks in s["metrics"].items():
                for task, values in tasks.items():
                    for metric in metrics:
                        if metric not in values:
                            raise ValueError(f"{path} has no {metric} (sensitivity.metrics); it has "
                                             f"{sorted(k for k in values if k != 'n')}")
                        rows.append({"dataset": s["dataset"], "backbone": s["backbone"], "protocol": protocol,
                                     "param": point.param, "value": point.value, "base": point.base,
                                     "task": task, "metric": metric, "run": s["run"], "seed": s["seed"],
                                     "score": float(values[metric]), "_point": order})
    if not rows:
        raise ValueError(f"no evaluation summary of a sensitivity run for seeds {sorted(seeds)} among the "
                         f"{len(summary_paths)} given")
    missing = sorted({p.run for p in points} - seen)
    if missing:
        log.warning("no evaluation summary for sensitivity run(s) %s: their points are left out", missing)
    long = pd.DataFrame(rows)
    keys = ["dataset", "backbone", "protocol", "_point", "param", "value", "base", "task", "metric", "run"]
    out = long.groupby(keys, sort=False)["score"].agg(mean="mean", std="std", n_seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    def position(order):
        order = list(order)
        return lambda value: order.index(value) if value in order else len(order)

    out["_order"] = list(zip(out["dataset"].map(position(config["datasets"])),
                             out["backbone"].map(position(config["backbones"])),
                             out["protocol"].map(position(PROTOCOL_ORDER)), out["_point"],
                             out["task"].map(position(TASK_ORDER)), out["metric"].map(position(metrics))))
    out = out.sort_values("_order", kind="stable")
    return out[COLUMNS].reset_index(drop=True)


def _columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    present = set(zip(table["task"], table["metric"]))
    tasks = [t for t in TASK_ORDER if t in set(table["task"])] + sorted(set(table["task"]) - set(TASK_ORDER))
    metrics = list(dict.fromkeys(table["metric"]))
    return [(t, m) for t in tasks for m in metrics if (t, m) in present]


def _body(table: pd.DataFrame, pm: str):
    """(param, value, is base, cells) per point in table order; a cell is mean (± std with several seeds)."""
    cols = _columns(table)
    body = []
    for (param, value, base), rows in table.groupby(["param", "value", "base"], sort=False):
        cells = []
        for task, metric in cols:
            r = rows[(rows["task"] == task) & (rows["metric"] == metric)]
            if r.empty:
                cells.append(None)
                continue
            mean, std, n = float(r["mean"].iloc[0]), float(r["std"].iloc[0]), int(r["n_seeds"].iloc[0])
            cells.append(f"{mean:.4f}" + (f"{pm}{std:.4f}" if n > 1 else ""))
        body.append((str(param), str(value), bool(base), cells))
    return cols, body


def _seeds_phrase(table: pd.DataFrame) -> str:
    return seeds_phrase(int(table["n_seeds"].max()), single="1 seed")


def sensitivity_note(config: dict) -> str:
    """Which entry is varied, what the base rows are, and the hyper-parameters of every mapping point."""
    base = config["sensitivity"]["base"]
    label = config["methods"][base].get("label", base)
    mapped = [f"{p.param} {p.value} = " + ", ".join(f"{k} {v}" for k, v in p.overlay.items())
              for p in sweep_points(config) if not p.base and list(p.overlay) != [p.param]]
    note = (f"Each row changes the named hyper-parameter(s) of {label} and keeps the rest; (base) marks {label}'s "
            "own setting, its main-grid run.")
    return note + (" " + "; ".join(mapped) + "." if mapped else "")


def sensitivity_markdown(table: pd.DataFrame, title: str, note: str = "") -> str:
    cols, body = _body(table, " ± ")
    head = "| Hyper-parameter | Value | " + " | ".join(f"{TASK_LABEL.get(t, t)} {m.upper()}" for t, m in cols) + " |"
    lines = [f"**{title}** ({_seeds_phrase(table)})", "", head, "|" + "---|" * (len(cols) + 2)]
    for param, value, base, cells in body:
        lines.append(f"| {param} | {value}{' (base)' if base else ''} | "
                     + " | ".join("–" if c is None else c for c in cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def sensitivity_latex(table: pd.DataFrame, title: str, note: str = "") -> str:
    cols, body = _body(table, r" $\pm$ ")
    header = ["Hyper-parameter & Value & "
              + " & ".join(latex_escape(f"{TASK_LABEL.get(t, t)} {m.upper()}") for t, m in cols) + r" \\"]
    lines = [latex_escape(param) + " & " + latex_escape(value + (" (base)" if base else "")) + " & "
             + " & ".join("--" if c is None else c for c in cells) + r" \\" for param, value, base, cells in body]
    return latex_document(f"{title} ({_seeds_phrase(table)}).", "ll" + "c" * len(cols), header, lines, note)


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    table = sensitivity_table(config, inputs["summaries"])
    write_csv(table, out / "sensitivity.csv")
    base = config["sensitivity"]["base"]
    note = sensitivity_note(config)
    md, tex = [], []
    for (dataset, backbone, protocol), grp in table.groupby(["dataset", "backbone", "protocol"], sort=False):
        title = (f"Sensitivity of {config['methods'][base].get('label', base)} · {dataset} · {backbone} · "
                 f"{protocol} protocol · {config['evaluate']['split']} split")
        md.append(sensitivity_markdown(grp, title, note))
        tex.append(sensitivity_latex(grp, title, note))
    write_text("\n".join(md), out / "sensitivity.md")
    write_text("\n".join(tex), out / "sensitivity.tex")
    return f"sensitivity table: {out / 'sensitivity.md'} ({len(table[['param', 'value']].drop_duplicates())} points)"


TABLE = Table(name="sensitivity", inputs={"summaries": "sensitivity"},
              outputs=("sensitivity.csv", "sensitivity.md", "sensitivity.tex"), make=make,
              config_keys=("sensitivity", "methods", "evaluate"), report="sensitivity.csv")
