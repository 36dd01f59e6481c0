"""Result tables: collect run outputs (evaluation and training summaries, training logs) into tidy long tables
and render them as Markdown and LaTeX (booktabs)."""
from __future__ import annotations

import json
import math
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
                  "Δ": r"$\Delta$", "–": "--"}


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


# --- ablation ----------------------------------------------------------------------------------------------
#: method -> (multi-subspace decomposition, null-space projection): GEMS and the ablations the paper reports
ABLATION_COMPONENTS = {"gems": (True, True), "gems_no_nsp": (True, False), "gems_no_msd": (False, True),
                       "galore": (False, False)}


def ablation_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of a main-table summary (seed_summary, with or without markers) that belong to GEMS and its
    ablations, labelled with the components each keeps, in the order full GEMS → neither component."""
    sub = summary[summary["method"].isin(ABLATION_COMPONENTS)].copy()
    if sub.empty:
        raise ValueError(f"no run of {sorted(ABLATION_COMPONENTS)} in the main table: the ablation table needs "
                         "GEMS and its ablations in the config's methods")
    def label(row):
        msd, nsp = ABLATION_COMPONENTS[row["method"]]
        return f"{row['label']} (MSD {'yes' if msd else 'no'}, NSP {'yes' if nsp else 'no'})"
    sub["label"] = sub.apply(label, axis=1)
    order = {m: i for i, m in enumerate(ABLATION_COMPONENTS)}
    sub["_order"] = sub["method"].map(order)
    return sub.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


ABLATION_NOTE = ("MSD: multi-subspace decomposition (shared + search + recommendation subspaces with gated "
                 "fusion); NSP: null-space projection. GEMS without both is GaLore (one subspace).")


# --- efficiency --------------------------------------------------------------------------------------------
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


# --- knowledge retention -----------------------------------------------------------------------------------
#: knowledge table columns: (header, summary column or (base column, mean column, std column), factor, format)
KNOWLEDGE_COLUMNS = [
    ("PPL before", "ppl_base", 1.0, "{:.2f}"),
    ("PPL after", ("ppl_mean", "ppl_std"), 1.0, "{:.2f}"),
    ("ΔPPL (%)", ("ppl_rel_change_mean", "ppl_rel_change_std"), 100.0, "{:+.1f}"),
    ("Cloze before (%)", "cloze_base", 100.0, "{:.1f}"),
    ("Cloze after (%)", ("cloze_mean", "cloze_std"), 100.0, "{:.1f}"),
    ("ΔCloze (pp)", ("cloze_change_mean", "cloze_change_std"), 100.0, "{:+.1f}"),
]


def collect_knowledge(retention_paths: list[Path], labels: dict[str, str] | None = None
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed rows of the runs, rows of the pre-trained backbones) from retention JSONs
    (gemsbench.cli.retention; ``kind`` run or base). A run's ``ppl_rel_change`` is ppl / ppl_base − 1 and its
    ``cloze_change`` cloze − cloze_base (accuracy units), against the base of its dataset and backbone."""
    runs, bases = [], []
    for path in retention_paths:
        s = json.loads(Path(path).read_text())
        row = {"dataset": s["dataset"], "backbone": s["backbone"], "ppl": float(s["ppl"]),
               "cloze": float(s["cloze_accuracy"]), "tokens": int(s["tokens"]), "probes": int(s["probes"]),
               "articles": s["settings"]["articles"], "max_tokens": s["settings"]["max_tokens"]}
        if s.get("kind") == "base":
            bases.append(row)
        else:
            runs.append({**row, "run": s["run"], "label": (labels or {}).get(s["run"], s["run"]),
                         "method": s["method"], "seed": s["seed"]})
    if not runs:
        raise ValueError("no run retention JSONs to aggregate (only base ones)")
    base = pd.DataFrame(bases, columns=["dataset", "backbone", "ppl", "cloze", "tokens", "probes", "articles",
                                        "max_tokens"])
    if base.duplicated(["dataset", "backbone"]).any():
        raise ValueError("more than one base retention JSON for a (dataset, backbone); give one each")
    per_seed = pd.DataFrame(runs)
    merged = per_seed.merge(base[["dataset", "backbone", "ppl", "cloze", "articles", "max_tokens"]],
                            on=["dataset", "backbone"], how="left", suffixes=("", "_base"))
    lacking = merged.loc[merged["ppl_base"].isna(), ["dataset", "backbone"]].drop_duplicates()
    if len(lacking):
        pairs = ", ".join(f"{d}/{b}" for d, b in lacking.itertuples(index=False))
        raise ValueError(f"no base retention JSON for {pairs}: make it with `python -m gemsbench.cli.retention "
                         "--base` (rule retention_base) and pass it with the runs' JSONs")
    differ = merged[(merged["articles"] != merged["articles_base"]) | (merged["max_tokens"] != merged["max_tokens_base"])]
    if len(differ):
        raise ValueError(f"run {differ['run'].iloc[0]!r} and its base were measured with different retention "
                         "settings; measure both again with the same config")
    merged["ppl_rel_change"] = merged["ppl"] / merged["ppl_base"] - 1.0
    merged["cloze_change"] = merged["cloze"] - merged["cloze_base"]
    return merged.drop(columns=["articles_base", "max_tokens_base"]), base


def knowledge_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, backbone, run): the base values and the mean and std over seeds of the run's
    perplexity, cloze accuracy and their changes (std 0 with one seed)."""
    keys = ["dataset", "backbone", "run", "label", "method"]
    g = per_seed.groupby(keys, sort=False)
    out = g.agg(seeds=("seed", "count"), articles=("articles", "first"), max_tokens=("max_tokens", "first"),
                tokens=("tokens", "first"), probes=("probes", "first"), ppl_base=("ppl_base", "first"),
                cloze_base=("cloze_base", "first")).reset_index()
    for col in ("ppl", "ppl_rel_change", "cloze", "cloze_change"):
        stats = g[col].agg(["mean", "std"]).reset_index(drop=True)
        out[f"{col}_mean"] = stats["mean"].to_numpy()
        out[f"{col}_std"] = stats["std"].fillna(0.0).to_numpy()
    return out


def knowledge_title(summary: pd.DataFrame, dataset: str, backbone: str) -> str:
    seeds = int(summary["seeds"].max())
    return f"Knowledge retention · {dataset} · {backbone} ({_seeds_phrase(seeds)})"


def knowledge_note(summary: pd.DataFrame) -> str:
    r = summary.iloc[0]
    return (f"Perplexity: token-weighted over the lead {int(r['max_tokens'])} tokens of {int(r['articles'])} held-out "
            f"Wikipedia articles ({int(r['tokens'])} predicted tokens), softmax over the backbone's own vocabulary; "
            "before = the pre-trained backbone with item tokens; ΔPPL relative to it (higher = more general text "
            f"forgotten). Cloze: {int(r['probes'])} factual analogy probes, multiple choice among the answers of each "
            "probe's section; Δ in percentage points.")


def _knowledge_rows(summary: pd.DataFrame, pm: str):
    body = []
    for _, r in summary.iterrows():
        seeds = int(r["seeds"])
        cells = []
        for _, col, factor, fmt in KNOWLEDGE_COLUMNS:
            if isinstance(col, str):
                cells.append(fmt.format(float(r[col]) * factor))
                continue
            mean, std = float(r[col[0]]) * factor, float(r[col[1]]) * factor
            cells.append(fmt.format(mean) + (pm + fmt.replace("+", "").format(std) if seeds > 1 else ""))
        body.append((str(r["label"]), cells))
    return body


def knowledge_markdown(summary: pd.DataFrame, title: str) -> str:
    head = "| Method | " + " | ".join(h for h, *_ in KNOWLEDGE_COLUMNS) + " |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (len(KNOWLEDGE_COLUMNS) + 1)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _knowledge_rows(summary, " ± ")]
    return "\n".join(lines + ["", knowledge_note(summary)]) + "\n"


def knowledge_latex(summary: pd.DataFrame, title: str) -> str:
    header = ["Method & " + " & ".join(latex_escape(h) for h, *_ in KNOWLEDGE_COLUMNS) + r" \\"]
    body = [latex_escape(label) + " & " + " & ".join(cells) + r" \\"
            for label, cells in _knowledge_rows(summary, r" $\pm$ ")]
    return _latex_document(title + ".", "l" + "r" * len(KNOWLEDGE_COLUMNS), header, body,
                           knowledge_note(summary))


# --- gradient conflict -------------------------------------------------------------------------------------
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
