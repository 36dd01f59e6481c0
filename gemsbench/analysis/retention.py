"""The retention table: retention JSONs of the trained LLM runs and of their pre-trained backbones
(gemsbench.cli.retention, run and ``--base`` mode) -> perplexity on held-out Wikipedia text and factual cloze
accuracy before / after fine-tuning per run, and their changes, mean ± std over seeds (``retention.{csv,md,tex}``;
the measurement itself: gemsbench/retention.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .table import Table
from .render import labels as run_labels
from .render import latex_document, latex_escape, markdown_rows, seeds_phrase, write_grouped

#: retention table columns: (header, summary column or (base column, mean column, std column), factor, format)
RETENTION_COLUMNS = [
    ("PPL before", "ppl_base", 1.0, "{:.2f}"),
    ("PPL after", ("ppl_mean", "ppl_std"), 1.0, "{:.2f}"),
    ("ΔPPL (%)", ("ppl_rel_change_mean", "ppl_rel_change_std"), 100.0, "{:+.1f}"),
    ("Cloze before (%)", "cloze_base", 100.0, "{:.1f}"),
    ("Cloze after (%)", ("cloze_mean", "cloze_std"), 100.0, "{:.1f}"),
    ("ΔCloze (pp)", ("cloze_change_mean", "cloze_change_std"), 100.0, "{:+.1f}"),
]


def collect_retention(retention_paths: list[Path], labels: dict[str, str] | None = None
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
    differ = merged[(merged["articles"] != merged["articles_base"])
                    | (merged["max_tokens"] != merged["max_tokens_base"])]
    if len(differ):
        raise ValueError(f"run {differ['run'].iloc[0]!r} and its base were measured with different retention "
                         "settings; measure both again with the same config")
    merged["ppl_rel_change"] = merged["ppl"] / merged["ppl_base"] - 1.0
    merged["cloze_change"] = merged["cloze"] - merged["cloze_base"]
    return merged.drop(columns=["articles_base", "max_tokens_base"]), base


def retention_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
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


def retention_title(summary: pd.DataFrame, dataset: str, backbone: str) -> str:
    seeds = int(summary["seeds"].max())
    return f"Knowledge retention · {dataset} · {backbone} ({seeds_phrase(seeds)})"


def retention_note(summary: pd.DataFrame) -> str:
    r = summary.iloc[0]
    return (f"Perplexity: token-weighted over the lead {int(r['max_tokens'])} tokens of {int(r['articles'])} held-out "
            f"Wikipedia articles ({int(r['tokens'])} predicted tokens), softmax over the backbone's own vocabulary; "
            "before = the pre-trained backbone with item tokens; ΔPPL relative to it (higher = more general text "
            f"forgotten). Cloze: {int(r['probes'])} factual analogy probes, multiple choice among the answers of each "
            "probe's section; Δ in percentage points.")


def _retention_rows(summary: pd.DataFrame, pm: str):
    body = []
    for _, r in summary.iterrows():
        seeds = int(r["seeds"])
        cells = []
        for _, col, factor, fmt in RETENTION_COLUMNS:
            if isinstance(col, str):
                cells.append(fmt.format(float(r[col]) * factor))
                continue
            mean, std = float(r[col[0]]) * factor, float(r[col[1]]) * factor
            cells.append(fmt.format(mean) + (pm + fmt.replace("+", "").format(std) if seeds > 1 else ""))
        body.append((str(r["label"]), cells))
    return body


def retention_markdown(summary: pd.DataFrame, title: str) -> str:
    return markdown_rows(title, ["Method", *(h for h, *_ in RETENTION_COLUMNS)], _retention_rows(summary, " ± "),
                         retention_note(summary))


def retention_latex(summary: pd.DataFrame, title: str) -> str:
    header = ["Method & " + " & ".join(latex_escape(h) for h, *_ in RETENTION_COLUMNS) + r" \\"]
    body = [latex_escape(label) + " & " + " & ".join(cells) + r" \\"
            for label, cells in _retention_rows(summary, r" $\pm$ ")]
    return latex_document(title + ".", "l" + "r" * len(RETENTION_COLUMNS), header, body,
                           retention_note(summary))


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    per_seed, _ = collect_retention(inputs["retention"], run_labels(config))
    summary = retention_summary(per_seed)
    return write_grouped(summary, out, "retention", retention_title, retention_markdown, retention_latex)


TABLE = Table(name="retention", inputs={"retention": "retention"},
              outputs=("retention.csv", "retention.md", "retention.tex"), make=make, config_keys=("methods",),
              report="retention.csv")
