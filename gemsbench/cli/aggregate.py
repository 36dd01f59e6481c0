"""Aggregate run outputs into tables.

* ``--table main`` (default): evaluation summaries -> the main results table per dataset, backbone and protocol
  (``main.csv``, ``main_per_seed.csv``, ``main.md``, ``main.tex``); with ``--significance`` (the CSV of
  ``gemsbench.cli.significance``) its cells carry † / ‡ markers.
* ``--table efficiency``: training summaries -> training cost per run (``efficiency.{csv,md,tex}``).
* ``--table conflict``: training summaries -> the search/rec gradient cosines logged beside them
  (``conflict.csv`` per step, ``conflict_summary.csv`` and ``conflict.md`` with the share of steps with a negative
  cosine per run, ``conflict_layers.csv`` per targeted matrix).
* ``--table ablation``: the main table's CSV (``--main``) -> GEMS and its ablations with the components each
  keeps (``ablation.{csv,md,tex}``).
* ``--table sensitivity``: evaluation summaries of the sensitivity sweep runs and of the base entry's main-grid
  runs -> metric per grid point, task and protocol over the sweep seeds (``sensitivity.{csv,md,tex}``).
* ``--table convergence``: training summaries -> the validations logged beside them against training targets
  (``convergence.csv`` per validation, ``convergence_summary.csv`` and ``convergence.md`` per run).
* ``--table knowledge``: retention JSONs of the runs and of their pre-trained backbones (gemsbench.cli.retention,
  run and ``--base`` mode) -> perplexity and cloze accuracy before / after fine-tuning per run
  (``knowledge.{csv,md,tex}``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text
from ..config import load_config
from ..convergence import collect_convergence, convergence_markdown, convergence_summary
from ..sensitivity import sensitivity_latex, sensitivity_markdown, sensitivity_note, sensitivity_table
from ..tables import (ABLATION_NOTE, ablation_summary, collect, collect_conflict, collect_efficiency,
                      collect_layer_conflict, conflict_markdown, efficiency_latex, efficiency_markdown,
                      efficiency_summary, efficiency_title, latex_table, markdown_table, seed_summary,
                      significance_note, with_markers)
from ..tables import collect_knowledge, knowledge_latex, knowledge_markdown, knowledge_summary, knowledge_title
from .common import main, parser

log = logging.getLogger(__name__)


def metric_tables(config: dict, summary: pd.DataFrame, stem: Path, prefix: str, note: str) -> None:
    """``{stem}.md`` and ``{stem}.tex``: one methods × (task, metric) table per dataset, backbone and protocol."""
    md, tex = [], []
    for (dataset, backbone, protocol), grp in summary.groupby(["dataset", "backbone", "protocol"], sort=False):
        title = f"{prefix}{dataset} · {backbone} · {protocol} protocol · {config['evaluate']['split']} split"
        md.append(markdown_table(grp, config["tables"]["metrics"], title, note))
        tex.append(latex_table(grp, config["tables"]["metrics"], title, note))
    atomic_write_text("\n".join(md), stem.with_suffix(".md"))
    atomic_write_text("\n".join(tex), stem.with_suffix(".tex"))


def main_table(config: dict, labels: dict[str, str], summaries: list[Path], out: Path, significance: str | None):
    long = collect(summaries, labels)
    summary = seed_summary(long)
    note = ""
    if significance:
        sig = pd.read_csv(significance)
        summary, note = with_markers(summary, sig), significance_note(sig, labels)
    atomic_write_text(long.to_csv(index=False), out / "main_per_seed.csv")
    atomic_write_text(summary.to_csv(index=False), out / "main.csv")
    metric_tables(config, summary, out / "main", "", note)
    print(f"main table: {out / 'main.md'} (CSV: {out / 'main.csv'}, LaTeX: {out / 'main.tex'})")


def efficiency_table(labels: dict[str, str], summaries: list[Path], out: Path):
    summary = efficiency_summary(collect_efficiency(summaries, labels))
    atomic_write_text(summary.to_csv(index=False), out / "efficiency.csv")
    md, tex = [], []
    for (dataset, backbone), grp in summary.groupby(["dataset", "backbone"], sort=False):
        title = efficiency_title(grp, dataset, backbone)
        md.append(efficiency_markdown(grp, title))
        tex.append(efficiency_latex(grp, title))
    atomic_write_text("\n".join(md), out / "efficiency.md")
    atomic_write_text("\n".join(tex), out / "efficiency.tex")
    print(f"efficiency table: {out / 'efficiency.md'}")


def conflict_tables(labels: dict[str, str], summaries: list[Path], out: Path):
    per_step, per_run = collect_conflict(summaries, labels)
    atomic_write_text(per_step.to_csv(index=False), out / "conflict.csv")
    atomic_write_text(per_run.to_csv(index=False), out / "conflict_summary.csv")
    atomic_write_text(collect_layer_conflict(summaries, labels).to_csv(index=False), out / "conflict_layers.csv")
    atomic_write_text("\n".join(
        conflict_markdown(grp, f"Search/recommendation gradient conflict · {dataset} · {backbone}")
        for (dataset, backbone), grp in per_run.groupby(["dataset", "backbone"], sort=False)), out / "conflict.md")
    silent = per_run.loc[per_run["steps_logged"] == 0, "run"].tolist()
    if silent:
        log.info("no gradient cosines logged for %s (an LLM method logs them every train.conflict_every steps, "
                 "or at every step when it uses task gradients)", silent)
    print(f"gradient conflict: {out / 'conflict.csv'} ({len(per_step)} logged steps)")


def ablation_table(config: dict, main_csv: Path, out: Path):
    main = pd.read_csv(main_csv)
    if "marker" in main:
        main["marker"] = main["marker"].fillna("")
    summary = ablation_summary(main)
    atomic_write_text(summary.to_csv(index=False), out / "ablation.csv")
    metric_tables(config, summary, out / "ablation", "Ablation · ", ABLATION_NOTE)
    print(f"ablation table: {out / 'ablation.md'}")


def sensitivity_tables(config: dict, summaries: list[Path], out: Path):
    table = sensitivity_table(config, summaries)
    atomic_write_text(table.to_csv(index=False), out / "sensitivity.csv")
    base = config["sensitivity"]["base"]
    note = sensitivity_note(config)
    md, tex = [], []
    for (dataset, backbone, protocol), grp in table.groupby(["dataset", "backbone", "protocol"], sort=False):
        title = (f"Sensitivity of {config['methods'][base].get('label', base)} · {dataset} · {backbone} · "
                 f"{protocol} protocol · {config['evaluate']['split']} split")
        md.append(sensitivity_markdown(grp, title, note))
        tex.append(sensitivity_latex(grp, title, note))
    atomic_write_text("\n".join(md), out / "sensitivity.md")
    atomic_write_text("\n".join(tex), out / "sensitivity.tex")
    print(f"sensitivity table: {out / 'sensitivity.md'} ({len(table[['param', 'value']].drop_duplicates())} points)")


def knowledge_table(labels: dict[str, str], retention_paths: list[Path], out: Path):
    per_seed, _ = collect_knowledge(retention_paths, labels)
    summary = knowledge_summary(per_seed)
    atomic_write_text(summary.to_csv(index=False), out / "knowledge.csv")
    md, tex = [], []
    for (dataset, backbone), grp in summary.groupby(["dataset", "backbone"], sort=False):
        title = knowledge_title(grp, dataset, backbone)
        md.append(knowledge_markdown(grp, title))
        tex.append(knowledge_latex(grp, title))
    atomic_write_text("\n".join(md), out / "knowledge.md")
    atomic_write_text("\n".join(tex), out / "knowledge.tex")
    print(f"knowledge table: {out / 'knowledge.md'}")


def convergence_tables(labels: dict[str, str], summaries: list[Path], out: Path):
    curves = collect_convergence(summaries, labels)
    summary = convergence_summary(curves)
    atomic_write_text(curves.to_csv(index=False), out / "convergence.csv")
    atomic_write_text(summary.to_csv(index=False), out / "convergence_summary.csv")
    md = [convergence_markdown(grp, f"Learning curves · {dataset} · {backbone}")
          for (dataset, backbone), grp in summary.groupby(["dataset", "backbone"], sort=False)]
    atomic_write_text("\n".join(md) or "No LLM run logged a validation.\n", out / "convergence.md")
    print(f"convergence table: {out / 'convergence.md'} (every validation: {out / 'convergence.csv'})")


def run(args) -> None:
    config = load_config(args.config)
    labels = {run: spec.get("label", run) for run, spec in config["methods"].items()}
    summaries = [Path(p) for p in args.summaries]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.significance and args.table != "main":
        raise ValueError("--significance only applies to --table main")
    if args.table == "ablation":
        if not args.main:
            raise ValueError("--table ablation reads the main table: pass --main results/.../tables/main.csv")
        ablation_table(config, Path(args.main), out)
        return
    if not summaries:
        raise ValueError(f"--table {args.table} needs --summaries (the runs' summary JSON files)")
    if args.table == "main":
        main_table(config, labels, summaries, out, args.significance)
    elif args.table == "efficiency":
        efficiency_table(labels, summaries, out)
    elif args.table == "sensitivity":
        sensitivity_tables(config, summaries, out)
    elif args.table == "knowledge":
        knowledge_table(labels, summaries, out)
    elif args.table == "convergence":
        convergence_tables(labels, summaries, out)
    else:
        conflict_tables(labels, summaries, out)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--table", choices=["main", "efficiency", "conflict", "ablation", "sensitivity",
                                        "knowledge", "convergence"], default="main")
    p.add_argument("--main", help="the main table's CSV (--table ablation)")
    p.add_argument("--summaries", nargs="+", default=[],
                   help="evaluation summary JSON files (main, sensitivity) or training summary.json files "
                        "(efficiency, conflict, convergence) or retention JSONs of runs and bases (knowledge)")
    p.add_argument("--significance", help="significance CSV from gemsbench.cli.significance (main table markers)")
    p.add_argument("--out-dir", required=True)
    main(run, p.parse_args())
