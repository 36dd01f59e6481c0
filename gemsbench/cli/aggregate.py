"""Aggregate run outputs into tables.

* ``--table main`` (default): evaluation summaries -> the main results table per dataset, backbone and protocol
  (``main.csv``, ``main_per_seed.csv``, ``main.md``, ``main.tex``); with ``--significance`` (the CSV of
  ``gemsbench.cli.significance``) its cells carry † / ‡ markers.
* ``--table efficiency``: training summaries -> training cost per run (``efficiency.{csv,md,tex}``).
* ``--table conflict``: training summaries -> the search/rec gradient cosines logged beside them
  (``conflict.csv`` per step, ``conflict_summary.csv`` with the share of steps with a negative cosine per run).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..config import load_config
from ..tables import (collect, collect_conflict, collect_efficiency, efficiency_latex, efficiency_markdown,
                      efficiency_summary, efficiency_title, latex_table, markdown_table, seed_summary,
                      significance_note, with_markers, write_text_atomic)
from .common import main, parser

log = logging.getLogger(__name__)


def main_table(config: dict, labels: dict[str, str], summaries: list[Path], out: Path, significance: str | None):
    long = collect(summaries, labels)
    summary = seed_summary(long)
    note = ""
    if significance:
        sig = pd.read_csv(significance)
        summary, note = with_markers(summary, sig), significance_note(sig, labels)
    write_text_atomic(out / "main_per_seed.csv", long.to_csv(index=False))
    write_text_atomic(out / "main.csv", summary.to_csv(index=False))
    md, tex = [], []
    for (dataset, backbone, protocol), grp in summary.groupby(["dataset", "backbone", "protocol"], sort=False):
        title = f"{dataset} · {backbone} · {protocol} protocol · {config['evaluate']['split']} split"
        md.append(markdown_table(grp, config["tables"]["metrics"], title, note))
        tex.append(latex_table(grp, config["tables"]["metrics"], title, note))
    write_text_atomic(out / "main.md", "\n".join(md))
    write_text_atomic(out / "main.tex", "\n".join(tex))
    print(f"main table: {out / 'main.md'} (CSV: {out / 'main.csv'}, LaTeX: {out / 'main.tex'})")


def efficiency_table(labels: dict[str, str], summaries: list[Path], out: Path):
    summary = efficiency_summary(collect_efficiency(summaries, labels))
    write_text_atomic(out / "efficiency.csv", summary.to_csv(index=False))
    md, tex = [], []
    for (dataset, backbone), grp in summary.groupby(["dataset", "backbone"], sort=False):
        title = efficiency_title(grp, dataset, backbone)
        md.append(efficiency_markdown(grp, title))
        tex.append(efficiency_latex(grp, title))
    write_text_atomic(out / "efficiency.md", "\n".join(md))
    write_text_atomic(out / "efficiency.tex", "\n".join(tex))
    print(f"efficiency table: {out / 'efficiency.md'}")


def conflict_tables(labels: dict[str, str], summaries: list[Path], out: Path):
    per_step, per_run = collect_conflict(summaries, labels)
    write_text_atomic(out / "conflict.csv", per_step.to_csv(index=False))
    write_text_atomic(out / "conflict_summary.csv", per_run.to_csv(index=False))
    silent = per_run.loc[per_run["steps_logged"] == 0, "run"].tolist()
    if silent:
        log.info("no gradient cosines logged for %s (an LLM method logs them every train.conflict_every steps, "
                 "or at every step when it uses task gradients)", silent)
    print(f"gradient conflict: {out / 'conflict.csv'} ({len(per_step)} logged steps)")


def run(args) -> None:
    config = load_config(args.config)
    labels = {run: spec.get("label", run) for run, spec in config["methods"].items()}
    summaries = [Path(p) for p in args.summaries]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.significance and args.table != "main":
        raise ValueError("--significance only applies to --table main")
    if args.table == "main":
        main_table(config, labels, summaries, out, args.significance)
    elif args.table == "efficiency":
        efficiency_table(labels, summaries, out)
    else:
        conflict_tables(labels, summaries, out)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--table", choices=["main", "efficiency", "conflict"], default="main")
    p.add_argument("--summaries", nargs="+", required=True,
                   help="evaluation summary JSON files (main) or training summary.json files (efficiency, conflict)")
    p.add_argument("--significance", help="significance CSV from gemsbench.cli.significance (main table markers)")
    p.add_argument("--out-dir", required=True)
    main(run, p.parse_args())
