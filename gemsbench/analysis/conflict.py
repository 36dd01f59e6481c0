"""The gradient-conflict tables: training summaries -> the search/recommendation gradient cosines logged beside
them (``conflict.csv`` per logged step, ``conflict_summary.csv`` and ``conflict.md`` with the share of steps with
a negative cosine per run, ``conflict_layers.csv`` per targeted matrix)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from .table import Table
from .render import labels as run_labels
from .render import write_csv, write_text

log = logging.getLogger(__name__)


def collect_conflict(train_summary_paths: list[Path], labels: dict[str, str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Search/recommendation gradient cosines from the training logs beside the training summaries.

    Returns (per-step rows: dataset, backbone, run, label, method, seed, step, cos_rec_search, and for GEMS
    cos_shared / cos_task — the cosine after projection into its shared and its task subspaces, NaN for other
    methods; per-run summary: seeds_logged, steps_logged, negative_fraction = share of logged steps with
    cosine < 0, as mean and std over seeds, mean_cosine, and the negative fractions in GEMS's subspaces).
    Every run gets a summary row, with steps_logged 0 when its log has no cosines (methods that never compute
    task gradients, or train.conflict_every = 0), so the figure can say so instead of silently dropping it.
    """
    steps, per_seed = [], []
    for path in map(Path, train_summary_paths):
        s = json.loads(path.read_text())
        tags = {"dataset": s["dataset"], "backbone": s["backbone"], "run": s["run"],
                "label": (labels or {}).get(s["run"], s["run"]), "method": s["method"]}
        entries = [e for e in _log_entries(path) if e.get("cos_rec_search") is not None]
        rows = [{**tags, "seed": s["seed"], "step": e["step"], "cos_rec_search": float(e["cos_rec_search"]),
                 **{k: float(e[k]) if e.get(k) is not None else math.nan for k in SUBSPACE_COSINES}}
                for e in entries]
        steps += rows
        values = [r["cos_rec_search"] for r in rows]
        seed_row = {**tags, "seed": s["seed"], "steps": len(values),
                    "negative": sum(c < 0 for c in values) / len(values) if values else math.nan,
                    "cos_sum": sum(values)}
        for k in SUBSPACE_COSINES:
            sub = [r[k] for r in rows if not math.isnan(r[k])]
            seed_row[f"negative_{k}"] = sum(c < 0 for c in sub) / len(sub) if sub else math.nan
        per_seed.append(seed_row)
    step_cols = ["dataset", "backbone", "run", "label", "method", "seed", "step", "cos_rec_search",
                 *SUBSPACE_COSINES]
    per_step = pd.DataFrame(steps, columns=step_cols)
    seeds = pd.DataFrame(per_seed)
    keys = ["dataset", "backbone", "run", "label", "method"]
    g = seeds.groupby(keys, sort=False)
    summary = g.agg(seeds_logged=("steps", lambda x: int((x > 0).sum())), steps_logged=("steps", "sum"),
                    negative_fraction=("negative", "mean"), negative_fraction_std=("negative", "std"),
                    cos_sum=("cos_sum", "sum"),
                    **{f"negative_fraction_{k.removeprefix('cos_')}": (f"negative_{k}", "mean")
                       for k in SUBSPACE_COSINES}).reset_index()
    summary["mean_cosine"] = (summary["cos_sum"] / summary["steps_logged"]).where(summary["steps_logged"] > 0)
    summary["negative_fraction_std"] = (summary["negative_fraction_std"].where(summary["seeds_logged"] > 1, 0.0)
                                        .where(summary["steps_logged"] > 0))
    return per_step, summary.drop(columns="cos_sum")


#: GEMS's cosines after projection (gems.optimizer last_stats, logged on conflict steps)
SUBSPACE_COSINES = ("cos_shared", "cos_task")


def _log_entries(summary_path: Path) -> list[dict]:
    log_path = Path(summary_path).with_name("train_log.jsonl")
    return [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []


def layer_depth(layer: str) -> int | None:
    """The block index in a targeted layer's name (``model.layers.3.mlp.up_proj`` -> 3), None if it has none."""
    for part in layer.split("."):
        if part.isdigit():
            return int(part)
    return None


def collect_layer_conflict(train_summary_paths: list[Path], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Per targeted matrix: the search/rec gradient cosine averaged over the logged steps and seeds of each run,
    the share of (step, seed) pairs where it is negative, and how many there were. Columns: dataset, backbone,
    run, label, method, layer, layer_type, depth, mean_cosine, negative_fraction, n."""
    rows = []
    for path in map(Path, train_summary_paths):
        s = json.loads(path.read_text())
        for e in _log_entries(path):
            for layer, cos in (e.get("cos_layers") or {}).items():
                rows.append({"dataset": s["dataset"], "backbone": s["backbone"], "run": s["run"],
                             "label": (labels or {}).get(s["run"], s["run"]), "method": s["method"],
                             "layer": layer, "cos": float(cos)})
    cols = ["dataset", "backbone", "run", "label", "method", "layer", "layer_type", "depth", "mean_cosine",
            "negative_fraction", "n"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    df["negative"] = df["cos"] < 0
    out = df.groupby(["dataset", "backbone", "run", "label", "method", "layer"], sort=False).agg(
        mean_cosine=("cos", "mean"), negative_fraction=("negative", "mean"), n=("cos", "count")).reset_index()
    out["layer_type"] = out["layer"].str.rsplit(".", n=1).str[-1]
    out["depth"] = out["layer"].map(layer_depth)
    return out[cols]


def conflict_markdown(summary: pd.DataFrame, title: str) -> str:
    """Per method: steps logged, share of steps with a negative search/rec cosine (± std over seeds), mean
    cosine, and for GEMS the shares after projection into its shared and task subspaces."""
    lines = [f"**{title}**", "", "| Method | Steps logged | Negative cosine (share of steps) | Mean cosine | "
             "Negative in shared subspace | Negative in task subspaces |", "|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        if not r["steps_logged"]:
            lines.append(f"| {r['label']} | 0 | – | – | – | – |")
            continue
        std = f" ± {r['negative_fraction_std']:.2f}" if r["seeds_logged"] > 1 else ""
        sub = [f"{r[c]:.2f}" if pd.notna(r[c]) else "–"
               for c in ("negative_fraction_shared", "negative_fraction_task")]
        lines.append(f"| {r['label']} | {int(r['steps_logged'])} | {r['negative_fraction']:.2f}{std} | "
                     f"{r['mean_cosine']:.3f} | {sub[0]} | {sub[1]} |")
    note = ("Cosine between the search and the recommendation gradient of all trainable parameters, logged every "
            "train.conflict_every steps (both tasks in the batch); per-matrix values: conflict_layers.csv.")
    return "\n".join(lines + ["", note]) + "\n"


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    labels, summaries = run_labels(config), inputs["summaries"]
    per_step, per_run = collect_conflict(summaries, labels)
    write_csv(per_step, out / "conflict.csv")
    write_csv(per_run, out / "conflict_summary.csv")
    write_csv(collect_layer_conflict(summaries, labels), out / "conflict_layers.csv")
    write_text("\n".join(
        conflict_markdown(grp, f"Search/recommendation gradient conflict · {dataset} · {backbone}")
        for (dataset, backbone), grp in per_run.groupby(["dataset", "backbone"], sort=False)), out / "conflict.md")
    silent = per_run.loc[per_run["steps_logged"] == 0, "run"].tolist()
    if silent:
        log.info("no gradient cosines logged for %s (an LLM method logs them every train.conflict_every steps, "
                 "or at every step when it uses task gradients)", silent)
    return f"gradient conflict: {out / 'conflict.csv'} ({len(per_step)} logged steps)"


TABLE = Table(name="conflict", inputs={"summaries": "training"},
              outputs=("conflict.csv", "conflict_summary.csv", "conflict_layers.csv", "conflict.md"), make=make,
              config_keys=("methods",), report="conflict_summary.csv")
