"""Result tables: collect run outputs (evaluation and training summaries, training logs) into tidy long tables
and render them as Markdown and LaTeX (booktabs)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

TASK_LABEL = {"search": "Search", "rec": "Recommendation"}

#: efficiency quantities of a training summary: (key, column header, factor from the stored unit, format)
EFFICIENCY_FIELDS = [
    ("trainable_parameters", "Trainable params (M)", 1e-6, "{:.2f}"),
    ("optimizer_state_bytes", "Optimizer state (MiB)", 2.0 ** -20, "{:.1f}"),
    ("peak_memory_bytes", "Peak memory (GiB)", 2.0 ** -30, "{:.2f}"),
    ("seconds_per_step", "Time per step (s)", 1.0, "{:.2f}"),
    ("targets_per_second", "Targets per second", 1.0, "{:.1f}"),
    ("train_seconds", "Training time (min)", 1 / 60, "{:.1f}"),
]
EFFICIENCY_NOTE = ("Peak memory: CUDA peak allocation on a GPU, the process's peak resident memory on a CPU "
                   "(model, data and framework included). Time per step excludes validation.")


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary sibling and rename, so an interrupted job never leaves a half-written table."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    """``summary`` plus a ``marker`` column (``†``/``‡``/empty) from a significance CSV (gemsbench.stats)."""
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


@dataclass
class _Cell:
    mean: float
    std: float
    best: bool
    marker: str


def _grid(summary: pd.DataFrame, metrics: list[str]):
    """(task, metric) columns, the number of seeds, and rows (label, cells) shared by both renderers."""
    sub = summary[summary["metric"].isin(metrics)]
    cols = [(t, m) for t in ("search", "rec") for m in metrics if ((sub["task"] == t) & (sub["metric"] == m)).any()]
    best = {c: sub[(sub["task"] == c[0]) & (sub["metric"] == c[1])]["mean"].max() for c in cols}
    seeds = int(sub["seeds"].max()) if len(sub) else 0
    body = []
    for run, rows in sub.groupby("run", sort=False):
        cells = []
        for t, m in cols:
            r = rows[(rows["task"] == t) & (rows["metric"] == m)]
            if r.empty:
                cells.append(None)
                continue
            mean = float(r["mean"].iloc[0])
            mark = str(r["marker"].iloc[0]) if "marker" in r else ""
            cells.append(_Cell(mean, float(r["std"].iloc[0]), mean == best[(t, m)], mark))
        body.append((str(rows["label"].iloc[0]), cells))
    return cols, seeds, body


def _seeds_phrase(seeds: int) -> str:
    return f"mean ± std over {seeds} seeds" if seeds > 1 else "mean, 1 seed"


def markdown_table(summary: pd.DataFrame, metrics: list[str], title: str, note: str = "") -> str:
    """Methods as rows, (task, metric) as columns; best mean per column in bold; mean ± std over seeds; a
    ``marker`` column in ``summary`` (see with_markers) is appended to the cells, explained by ``note``."""
    cols, seeds, body = _grid(summary, metrics)
    head = "| Method | " + " | ".join(f"{TASK_LABEL[t]} {m.upper()}" for t, m in cols) + " |"
    lines = [f"**{title}** ({_seeds_phrase(seeds)})", "", head, "|" + "---|" * (len(cols) + 1)]
    for label, cells in body:
        texts = []
        for c in cells:
            if c is None:
                texts.append("–")
                continue
            text = f"{c.mean:.4f}" + (f" ± {c.std:.4f}" if seeds > 1 else "")
            texts.append((f"**{text}**" if c.best else text) + c.marker)
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "·": r"$\cdot$", "±": r"$\pm$", "×": r"$\times$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$",
                  "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_document(title: str, colspec: str, header: list[str], body: list[str], note: str) -> str:
    caption = latex_escape(title) + (" " + latex_escape(note) if note else "")
    return "\n".join([r"% needs \usepackage{booktabs}", r"\begin{table*}[t]", r"\centering", r"\small",
                      rf"\caption{{{caption}}}", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *header,
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table*}", ""])


def latex_table(summary: pd.DataFrame, metrics: list[str], title: str, note: str = "") -> str:
    """The Markdown table as a booktabs LaTeX table: tasks as column groups, ``\\textbf`` for the best mean."""
    cols, seeds, body = _grid(summary, metrics)
    tasks = list(dict.fromkeys(t for t, _ in cols))
    groups, rules, start = [], [], 2
    for t in tasks:
        n = sum(1 for tt, _ in cols if tt == t)
        groups.append(rf"\multicolumn{{{n}}}{{c}}{{{TASK_LABEL[t]}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    header = [" & " + " & ".join(groups) + r" \\", "".join(rules),
              "Method & " + " & ".join(latex_escape(m.upper()) for _, m in cols) + r" \\"]
    lines = []
    for label, cells in body:
        texts = []
        for c in cells:
            if c is None:
                texts.append("--")
                continue
            text = f"{c.mean:.4f}" + (rf" $\pm$ {c.std:.4f}" if seeds > 1 else "")
            texts.append((rf"\textbf{{{text}}}" if c.best else text) + latex_escape(c.marker))
        lines.append(latex_escape(label) + " & " + " & ".join(texts) + r" \\")
    return _latex_document(f"{title} ({_seeds_phrase(seeds)}).", "l" + "c" * len(cols), header, lines, note)


# --- efficiency --------------------------------------------------------------------------------------------
def collect_efficiency(train_summary_paths: list[Path], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Long table of training costs: dataset, backbone, device, run, label, method, seed, quantity, value.

    Quantities a run does not report (popularity has no optimizer) are left out rather than set to 0."""
    rows = []
    for path in train_summary_paths:
        s = json.loads(Path(path).read_text())
        for key, *_ in EFFICIENCY_FIELDS:
            if s.get(key) is not None:
                rows.append({"dataset": s["dataset"], "backbone": s["backbone"], "device": s.get("device", ""),
                             "run": s["run"], "label": (labels or {}).get(s["run"], s["run"]),
                             "method": s["method"], "seed": s["seed"], "quantity": key, "value": float(s[key])})
    if not rows:
        raise ValueError("no training summaries with efficiency figures to aggregate")
    return pd.DataFrame(rows)


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
    return f"Training cost · {dataset} · {backbone} · {device} ({_seeds_phrase(seeds)})"


def efficiency_markdown(summary: pd.DataFrame, title: str) -> str:
    head = "| Method | " + " | ".join(h for _, h, _, _ in EFFICIENCY_FIELDS) + " |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (len(EFFICIENCY_FIELDS) + 1)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _efficiency_rows(summary, " ± ")]
    return "\n".join(lines + ["", EFFICIENCY_NOTE]) + "\n"


def efficiency_latex(summary: pd.DataFrame, title: str) -> str:
    header = ["Method & " + " & ".join(latex_escape(h) for _, h, _, _ in EFFICIENCY_FIELDS) + r" \\"]
    body = [latex_escape(label) + " & " + " & ".join(c.replace("–", "--") for c in cells) + r" \\"
            for label, cells in _efficiency_rows(summary, r" $\pm$ ")]
    return _latex_document(title + ".", "l" + "r" * len(EFFICIENCY_FIELDS), header, body, EFFICIENCY_NOTE)


# --- gradient conflict -------------------------------------------------------------------------------------
def collect_conflict(train_summary_paths: list[Path], labels: dict[str, str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Search/recommendation gradient cosines from the training logs beside the training summaries.

    Returns (per-step rows: dataset, backbone, run, label, method, seed, step, cos_rec_search;
    per-run summary: seeds_logged, steps_logged, negative_fraction = share of logged steps with cosine < 0,
    as mean and std over seeds, and mean_cosine). Every run gets a summary row, with steps_logged 0 when its log
    has no cosines (methods that never compute task gradients, or train.conflict_every = 0), so the figure can
    say so instead of silently dropping it.
    """
    steps, per_seed = [], []
    for path in map(Path, train_summary_paths):
        s = json.loads(path.read_text())
        tags = {"dataset": s["dataset"], "backbone": s["backbone"], "run": s["run"],
                "label": (labels or {}).get(s["run"], s["run"]), "method": s["method"]}
        log_path = path.with_name("train_log.jsonl")
        entries = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
        cosines = [(e["step"], float(e["cos_rec_search"])) for e in entries if e.get("cos_rec_search") is not None]
        steps += [{**tags, "seed": s["seed"], "step": step, "cos_rec_search": c} for step, c in cosines]
        values = [c for _, c in cosines]
        per_seed.append({**tags, "seed": s["seed"], "steps": len(values),
                         "negative": sum(c < 0 for c in values) / len(values) if values else math.nan,
                         "cos_sum": sum(values)})
    step_cols = ["dataset", "backbone", "run", "label", "method", "seed", "step", "cos_rec_search"]
    per_step = pd.DataFrame(steps, columns=step_cols)
    seeds = pd.DataFrame(per_seed)
    keys = ["dataset", "backbone", "run", "label", "method"]
    g = seeds.groupby(keys, sort=False)
    summary = g.agg(seeds_logged=("steps", lambda x: int((x > 0).sum())), steps_logged=("steps", "sum"),
                    negative_fraction=("negative", "mean"), negative_fraction_std=("negative", "std"),
                    cos_sum=("cos_sum", "sum")).reset_index()
    summary["mean_cosine"] = (summary["cos_sum"] / summary["steps_logged"]).where(summary["steps_logged"] > 0)
    summary["negative_fraction_std"] = (summary["negative_fraction_std"].where(summary["seeds_logged"] > 1, 0.0)
                                        .where(summary["steps_logged"] > 0))
    return per_step, summary.drop(columns="cos_sum")
