"""Learning curves from the training logs: validation metric against training targets, per run.

A results table compares trained models only if every method's validation curve has flattened by the end of
its budget. This module reads the validations each LLM run logged (``train_log.jsonl`` beside its training
summary: the selection metric, its per-task parts and the validation loss, at the step they were taken) and
puts them against the number of training targets the run had seen by then, so the curves of methods with
different step costs share one axis.

Per run (mean over seeds) the summary gives the budget, the best validation and where it was reached, the last
validation, and the *late gain*: last value − value at the first validation at or after three quarters of the
targets. A late gain near zero (or negative) says the curve has flattened; a large one says the budget stopped
a model that was still learning.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .table import Table
from .render import labels as run_labels
from .render import write_csv, write_text

#: the share of a run's targets after which its late gain is measured
LATE_FRACTION = 0.75
KEYS = ["dataset", "backbone", "run", "label", "method"]


def selection_metric(entry: dict) -> str | None:
    """The mean-over-tasks validation NDCG key of a log entry (``val_ndcg@5``), if it has one."""
    keys = [k for k in entry if k.startswith("val_ndcg@") and not k.endswith(("_rec", "_search"))]
    return keys[0] if keys else None


def collect_convergence(train_summary_paths: list[Path], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per validation of every LLM run: KEYS, seed, step, targets (cumulative training targets when it
    was taken), metric (the validation NDCG key), value, value_rec, value_search, val_loss. Runs without a
    training log (popularity, the shared-encoder models) have no rows."""
    rows = []
    for path in map(Path, train_summary_paths):
        log_path = path.with_name("train_log.jsonl")
        if not log_path.exists():
            continue
        s = json.loads(path.read_text())
        tags = {"dataset": s["dataset"], "backbone": s["backbone"], "run": s["run"],
                "label": (labels or {}).get(s["run"], s["run"]), "method": s["method"], "seed": s["seed"]}
        targets = 0
        for line in log_path.read_text().splitlines():
            e = json.loads(line)
            targets += int(e.get("n_rec") or 0) + int(e.get("n_search") or 0)
            key = selection_metric(e)
            if key is None:
                continue
            rows.append({**tags, "step": int(e["step"]) + 1, "targets": targets, "metric": key,
                         "value": float(e[key]), "value_rec": e.get(f"{key}_rec"),
                         "value_search": e.get(f"{key}_search"), "val_loss": e.get("val_loss")})
    cols = KEYS + ["seed", "step", "targets", "metric", "value", "value_rec", "value_search", "val_loss"]
    return pd.DataFrame(rows, columns=cols)


def _late_gain(curve: pd.DataFrame) -> float:
    """Last value − the value at the first validation at or after LATE_FRACTION of the run's targets."""
    late = curve[curve["targets"] >= LATE_FRACTION * curve["targets"].max()]
    return float(curve["value"].iloc[-1] - late["value"].iloc[0]) if len(late) > 1 else math.nan


def convergence_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run, averaged over seeds: validations, targets trained, best value and the targets where it was
    reached, last value, late gain (module docstring)."""
    per_seed = []
    for group, curve in curves.groupby([*KEYS, "seed"], sort=False):
        keys, seed = group[:-1], group[-1]
        curve = curve.sort_values("targets")
        best = curve.loc[curve["value"].idxmax()]
        per_seed.append({**dict(zip(KEYS, keys)), "seed": seed, "metric": curve["metric"].iloc[0],
                         "validations": len(curve), "targets": int(curve["targets"].max()),
                         "best": float(best["value"]), "best_targets": int(best["targets"]),
                         "last": float(curve["value"].iloc[-1]), "late_gain": _late_gain(curve)})
    cols = KEYS + ["metric", "seeds", "validations", "targets", "best", "best_targets", "last", "late_gain",
                   "late_gain_std"]
    if not per_seed:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(per_seed)
    out = df.groupby([*KEYS, "metric"], sort=False).agg(
        seeds=("seed", "count"), validations=("validations", "mean"), targets=("targets", "mean"),
        best=("best", "mean"), best_targets=("best_targets", "mean"), last=("last", "mean"),
        late_gain=("late_gain", "mean"), late_gain_std=("late_gain", "std")).reset_index()
    out["late_gain_std"] = out["late_gain_std"].where(out["seeds"] > 1, 0.0)
    return out[cols]


def convergence_markdown(summary: pd.DataFrame, title: str) -> str:
    metric = summary["metric"].iloc[0].removeprefix("val_").replace("ndcg", "NDCG") if len(summary) else ""
    lines = [f"**{title}**", "",
             f"| Method | Targets trained | Validations | Best val {metric} | at targets | Last val {metric} | "
             "Late gain |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        std = f" ± {r['late_gain_std']:.3f}" if r["seeds"] > 1 and pd.notna(r["late_gain_std"]) else ""
        gain = "–" if pd.isna(r["late_gain"]) else f"{r['late_gain']:+.3f}{std}"
        lines.append(f"| {r['label']} | {r['targets']:,.0f} | {r['validations']:.0f} | {r['best']:.3f} | "
                     f"{r['best_targets']:,.0f} | {r['last']:.3f} | {gain} |")
    note = (f"Validation {metric} (mean of the search and recommendation tasks) against the training targets "
            f"seen; late gain = last value − value at the first validation after {LATE_FRACTION:.0%} of the "
            "targets: near zero, the curve has flattened; clearly positive, the budget stopped a model still "
            "learning. Every curve: convergence.csv.")
    return "\n".join(lines + ["", note]) + "\n"


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    curves = collect_convergence(inputs["summaries"], run_labels(config))
    summary = convergence_summary(curves)
    write_csv(curves, out / "convergence.csv")
    write_csv(summary, out / "convergence_summary.csv")
    md = [convergence_markdown(grp, f"Learning curves · {dataset} · {backbone}")
          for (dataset, backbone), grp in summary.groupby(["dataset", "backbone"], sort=False)]
    write_text("\n".join(md) or "No LLM run logged a validation.\n", out / "convergence.md")
    return f"convergence table: {out / 'convergence.md'} (every validation: {out / 'convergence.csv'})"


TABLE = Table(name="convergence", inputs={"summaries": "training"},
              outputs=("convergence.csv", "convergence_summary.csv", "convergence.md"), make=make,
              config_keys=("methods",), report="convergence_summary.csv")
