"""What every results table shares: task labels, the seeds phrase of a title, LaTeX escaping and the booktabs
document, the methods × (task, metric) grid (main and ablation tables) in Markdown and LaTeX, and writing a
table's files atomically. A table module (gemsbench.analysis.<name>) computes its rows; this module renders them,
so two tables never format the same thing two ways."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text

TASK_LABEL = {"search": "Search", "rec": "Recommendation"}
TASK_ORDER = ("search", "rec")
PROTOCOL_ORDER = ("sampled", "full")


def seeds_phrase(seeds: int, single: str = "mean, 1 seed") -> str:
    """How a title says what its cells are: ``mean ± std over N seeds``, or ``single`` for one seed."""
    return f"mean ± std over {seeds} seeds" if seeds > 1 else single


def labels(config: dict) -> dict[str, str]:
    """Run name -> the label tables and figures print (the config's ``methods.<run>.label``, else the name)."""
    return {run: spec.get("label", run) for run, spec in config["methods"].items()}


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(frame.to_csv(index=False), path)


def write_text(text: str, path: Path) -> None:
    atomic_write_text(text, path)


def write_grouped(summary: pd.DataFrame, out: Path, name: str, title, markdown, latex) -> str:
    """``name``.csv of the whole summary, then ``name``.md and ``name``.tex with one table per (dataset,
    backbone): ``title(group, dataset, backbone)`` heads each, ``markdown``/``latex(group, title)`` render it.
    Returns the line the aggregate step prints."""
    write_csv(summary, out / f"{name}.csv")
    md, tex = [], []
    for (dataset, backbone), grp in summary.groupby(["dataset", "backbone"], sort=False):
        heading = title(grp, dataset, backbone)
        md.append(markdown(grp, heading))
        tex.append(latex(grp, heading))
    write_text("\n".join(md), out / f"{name}.md")
    write_text("\n".join(tex), out / f"{name}.tex")
    return f"{name} table: {out / f'{name}.md'}"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "·": r"$\cdot$", "±": r"$\pm$", "×": r"$\times$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$",
                  "Δ": r"$\Delta$", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_document(title: str, colspec: str, header: list[str], body: list[str], note: str) -> str:
    """A booktabs ``table*`` with ``title`` (and ``note``) as its caption."""
    caption = latex_escape(title) + (" " + latex_escape(note) if note else "")
    return "\n".join([r"% needs \usepackage{booktabs}", r"\begin{table*}[t]", r"\centering", r"\small",
                      rf"\caption{{{caption}}}", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *header,
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table*}", ""])


def markdown_rows(title: str, header: list[str], body: list[tuple[str, list[str]]], note: str = "") -> str:
    """A titled Markdown table: ``header`` names every column, each body row is (label, cells)."""
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in body]
    return "\n".join(lines + (["", note] if note else [])) + "\n"


# --- the methods × (task, metric) grid of the main and ablation tables --------------------------------------
@dataclass
class _Cell:
    mean: float
    std: float
    best: bool
    marker: str


def _grid(summary: pd.DataFrame, metrics: list[str]):
    """(task, metric) columns, the number of seeds, and rows (label, cells) shared by both renderers."""
    sub = summary[summary["metric"].isin(metrics)]
    cols = [(t, m) for t in TASK_ORDER for m in metrics if ((sub["task"] == t) & (sub["metric"] == m)).any()]
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


def markdown_table(summary: pd.DataFrame, metrics: list[str], title: str, note: str = "") -> str:
    """Methods as rows, (task, metric) as columns; best mean per column in bold; mean ± std over seeds; a
    ``marker`` column in ``summary`` (main.with_markers) is appended to the cells, explained by ``note``."""
    cols, seeds, body = _grid(summary, metrics)
    head = "| Method | " + " | ".join(f"{TASK_LABEL[t]} {m.upper()}" for t, m in cols) + " |"
    lines = [f"**{title}** ({seeds_phrase(seeds)})", "", head, "|" + "---|" * (len(cols) + 1)]
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
    return latex_document(f"{title} ({seeds_phrase(seeds)}).", "l" + "c" * len(cols), header, lines, note)


def metric_tables(config: dict, summary: pd.DataFrame, stem: Path, prefix: str, note: str) -> None:
    """``{stem}.md`` and ``{stem}.tex``: one methods × (task, metric) table per dataset, backbone and protocol."""
    md, tex = [], []
    for (dataset, backbone, protocol), grp in summary.groupby(["dataset", "backbone", "protocol"], sort=False):
        title = f"{prefix}{dataset} · {backbone} · {protocol} protocol · {config['evaluate']['split']} split"
        md.append(markdown_table(grp, config["tables"]["metrics"], title, note))
        tex.append(latex_table(grp, config["tables"]["metrics"], title, note))
    write_text("\n".join(md), stem.with_suffix(".md"))
    write_text("\n".join(tex), stem.with_suffix(".tex"))
