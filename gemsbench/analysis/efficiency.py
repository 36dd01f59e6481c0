"""The efficiency table: training summaries -> training cost per run (trainable parameters, optimizer state, peak
memory, time per step and per epoch, step time against LoRA's, throughput, MFU), mean ± std over seeds
(``efficiency.{csv,md,tex}``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .table import Table
from .render import labels as run_labels
from .render import latex_document, latex_escape, markdown_rows, seeds_phrase, write_grouped

#: efficiency quantities of a training summary: (key, column header, factor from the stored unit, format)
EFFICIENCY_FIELDS = [
    ("trainable_parameters", "Trainable params (M)", 1e-6, "{:.2f}"),
    ("optimizer_state_bytes", "Optimizer state (MiB)", 2.0 ** -20, "{:.1f}"),
    ("peak_memory_bytes", "Peak memory (GiB)", 2.0 ** -30, "{:.2f}"),
    ("seconds_per_step", "Time per step (s)", 1.0, "{:.2f}"),
    ("step_time_vs_lora", "× LoRA time/step", 1.0, "{:.2f}"),
    ("seconds_per_epoch", "Time per epoch (min)", 1 / 60, "{:.1f}"),
    ("targets_per_second", "Targets per second", 1.0, "{:.1f}"),
    ("tokens_per_second", "Tokens per second", 1.0, "{:.0f}"),
    ("mfu", "MFU", 1.0, "{:.2f}"),
    ("train_seconds", "Training time (min)", 1 / 60, "{:.1f}"),
]
EFFICIENCY_NOTE = ("Peak memory: CUDA peak allocation on a GPU, the process's peak resident memory on a CPU "
                   "(model, data and framework included). Time per step excludes validation; × LoRA divides it by "
                   "the LoRA run's of the same seed; time per epoch = time per step × steps in one pass over the "
                   "training units (LLM methods; the runs themselves may train for less than an epoch). Tokens "
                   "per second and MFU (model FLOP/s ÷ a matrix product's rate in the run's dtype, measured in the "
                   "training process; gemsbench.throughput) cover the timed steps.")



def collect_efficiency(train_summary_paths: list[Path], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Long table of training costs: dataset, backbone, device, run, label, method, seed, quantity, value.

    Quantities a run does not report (popularity has no optimizer) are left out rather than set to 0."""
    summaries = [json.loads(Path(path).read_text()) for path in train_summary_paths]
    lora_step = lora_reference_steps(summaries)
    rows = []
    for s in summaries:
        s = {**s, **derived_efficiency(s, lora_step.get((s["dataset"], s["backbone"], s["seed"])))}
        for key, *_ in EFFICIENCY_FIELDS:
            if s.get(key) is not None:
                rows.append({"dataset": s["dataset"], "backbone": s["backbone"], "device": s.get("device", ""),
                             "run": s["run"], "label": (labels or {}).get(s["run"], s["run"]),
                             "method": s["method"], "seed": s["seed"], "quantity": key, "value": float(s[key])})
    if not rows:
        raise ValueError("no training summaries with efficiency figures to aggregate")
    return pd.DataFrame(rows)


def lora_reference_steps(summaries: list[dict]) -> dict[tuple, float]:
    """Seconds per step of the plain LoRA run per (dataset, backbone, seed): the run named ``lora``; without
    one, the only run of method ``lora`` (DoRA and PiSSA are ``lora`` runs too, so several such runs and no
    ``lora`` name give no reference rather than an arbitrary one)."""
    candidates: dict[tuple, list[dict]] = {}
    for s in summaries:
        if s["method"] == "lora" and s.get("seconds_per_step"):
            candidates.setdefault((s["dataset"], s["backbone"], s["seed"]), []).append(s)
    out = {}
    for key, runs in candidates.items():
        named = [s for s in runs if s.get("run") == "lora"]
        chosen = named or (runs if len(runs) == 1 else [])
        if chosen:
            out[key] = chosen[0]["seconds_per_step"]
    return out


def derived_efficiency(s: dict, lora_seconds_per_step: float | None) -> dict:
    """Quantities computed from a training summary: seconds per epoch (LLM runs: steps per pass over the
    training units × seconds per step) and the step time relative to LoRA's."""
    out = {}
    train = (s.get("spec") or {}).get("train") or {}
    if s.get("units") and s.get("seconds_per_step") and train.get("batch_size"):
        per_step = train["batch_size"] * train.get("grad_accum", 1)
        out["seconds_per_epoch"] = math.ceil(s["units"] / per_step) * s["seconds_per_step"]
    if lora_seconds_per_step and s.get("seconds_per_step") and s.get("units"):
        out["step_time_vs_lora"] = s["seconds_per_step"] / lora_seconds_per_step
    return out


def efficiency_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and number of seeds per (dataset, backbone, device, run, quantity), in the stored units."""
    keys = ["dataset", "backbone", "device", "run", "label", "method", "quantity"]
    out = long.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _efficiency_rows(summary: pd.DataFrame, pm: str):
    body = []
    for _, rows in summary.groupby("run", sort=False):
        cells = []
        for key, _, factor, fmt in EFFICIENCY_FIELDS:
            r = rows[rows["quantity"] == key]
            if r.empty:
                cells.append("–")
                continue
            mean, std, seeds = float(r["mean"].iloc[0]), float(r["std"].iloc[0]), int(r["seeds"].iloc[0])
            cells.append(fmt.format(mean * factor) + (pm + fmt.format(std * factor) if seeds > 1 else ""))
        body.append((str(rows["label"].iloc[0]), cells))
    return body


def efficiency_title(summary: pd.DataFrame, dataset: str, backbone: str) -> str:
    devices = sorted({d for d in summary["device"] if isinstance(d, str) and d})
    seeds = int(summary["seeds"].max())
    device = ", ".join(devices) or "device unknown"
    return f"Training cost · {dataset} · {backbone} · {device} ({seeds_phrase(seeds)})"


def efficiency_markdown(summary: pd.DataFrame, title: str) -> str:
    return markdown_rows(title, ["Method", *(h for _, h, _, _ in EFFICIENCY_FIELDS)],
                         _efficiency_rows(summary, " ± "), EFFICIENCY_NOTE)


def efficiency_latex(summary: pd.DataFrame, title: str) -> str:
    header = ["Method & " + " & ".join(latex_escape(h) for _, h, _, _ in EFFICIENCY_FIELDS) + r" \\"]
    body = [latex_escape(label) + " & " + " & ".join(c.replace("–", "--") for c in cells) + r" \\"
            for label, cells in _efficiency_rows(summary, r" $\pm$ ")]
    return latex_document(title + ".", "l" + "r" * len(EFFICIENCY_FIELDS), header, body, EFFICIENCY_NOTE)


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    summary = efficiency_summary(collect_efficiency(inputs["summaries"], run_labels(config)))
    return write_grouped(summary, out, "efficiency", efficiency_title, efficiency_markdown, efficiency_latex)


TABLE = Table(name="efficiency", inputs={"summaries": "training"},
              outputs=("efficiency.csv", "efficiency.md", "efficiency.tex"), make=make, config_keys=("methods",),
              report="efficiency.csv")
