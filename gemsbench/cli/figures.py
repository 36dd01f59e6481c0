"""Draw the paper figures from saved CSV tables only (no config, no model, no training outputs needed).

Each CSV given draws its figures into --out-dir, as PDF and PNG:

* --main main.csv                      -> main_{dataset}_{backbone}_{protocol}  (--metric per method and task)
* --efficiency efficiency.csv          -> efficiency_{dataset}_{backbone}       (time per step, peak memory)
* --conflict conflict.csv --conflict-summary conflict_summary.csv
                                       -> conflict_{dataset}_{backbone}         (gradient cosines, negative share)
* --sensitivity sweep.csv [...]        -> {csv name}                            (metric vs hyper-parameter value)
                                          {csv name}_{dataset}_{backbone}        (tables with those columns, e.g.
                                          aggregate --table sensitivity's; its sampled protocol where evaluated;
                                          with --sensitivity-main main.csv, the base run's seed-to-seed band)
* --retention retention.csv            -> retention_{dataset}_{backbone}        (perplexity and cloze change)
* --convergence convergence.csv        -> convergence_{dataset}_{backbone}      (validation vs training targets)

It deliberately avoids importing the training stack (torch, transformers), so redrawing takes seconds.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import pandas as pd

from ..figures import (conflict_figure, conflict_layers_figure, convergence_figure, efficiency_figure,
                       main_results_figure, retention_figure, sensitivity_figure)


def _read(path: str) -> pd.DataFrame:
    if not Path(path).exists():
        raise FileNotFoundError(f"table {path} does not exist; run `snakemake` for the tables first")
    return pd.read_csv(path)


def sensitivity_figures(table: pd.DataFrame, stem: Path, main: pd.DataFrame | None = None) -> list[Path]:
    """One figure per dataset and backbone when the table has those columns (``{stem}_{dataset}_{backbone}``),
    drawn on one protocol (sampled where present) when it has a protocol column; else one figure ``stem``.
    ``main`` (the main table) gives each figure the base run's spread over the main grid's seeds."""
    if not {"dataset", "backbone"} <= set(table.columns):
        return sensitivity_figure(table, stem)
    written = []
    for (ds, bb), grp in table.groupby(["dataset", "backbone"], sort=False):
        title = f"{ds} · {bb}"
        protocol = None
        if "protocol" in grp:
            protocol = "sampled" if (grp["protocol"] == "sampled").any() else grp["protocol"].iloc[0]
            grp, title = grp[grp["protocol"] == protocol], f"{title} · {protocol} protocol"
        written += sensitivity_figure(grp, stem.with_name(f"{stem.name}_{ds}_{bb}"), title=title,
                                      base_band=base_rows(main, grp, ds, bb, protocol))
    return written


def base_rows(main: pd.DataFrame | None, sweep: pd.DataFrame, dataset: str, backbone: str,
              protocol: str | None) -> pd.DataFrame | None:
    """The main table's rows of the sweep's base run (the run of its base points) for one dataset, backbone and
    protocol: its mean and std over the main grid's seeds."""
    if main is None or "base" not in sweep or "run" not in sweep:
        return None
    base_runs = set(sweep.loc[sweep["base"].astype(str) == "True", "run"])
    rows = main[(main["dataset"] == dataset) & (main["backbone"] == backbone) & main["run"].isin(base_runs)]
    if protocol is not None:
        rows = rows[rows["protocol"] == protocol]
    return rows


def run(args) -> list[Path]:
    if args.conflict_layers and not args.conflict:
        raise ValueError("--conflict-layers goes with --conflict and --conflict-summary")
    if (args.conflict is None) != (args.conflict_summary is None):
        raise ValueError("--conflict and --conflict-summary go together (both written by aggregate --table conflict)")
    out = Path(args.out_dir)
    written = []
    if args.main:
        for (ds, bb, protocol), grp in _read(args.main).groupby(["dataset", "backbone", "protocol"], sort=False):
            written += main_results_figure(grp, out / f"main_{ds}_{bb}_{protocol}", args.metric,
                                           title=f"{ds} · {bb} · {protocol} protocol")
    if args.efficiency:
        for (ds, bb), grp in _read(args.efficiency).groupby(["dataset", "backbone"], sort=False):
            written += efficiency_figure(grp, out / f"efficiency_{ds}_{bb}", title=f"{ds} · {bb}")
    if args.conflict:
        per_step, per_run = _read(args.conflict), _read(args.conflict_summary)
        for (ds, bb), grp in per_run.groupby(["dataset", "backbone"], sort=False):
            steps = per_step[(per_step["dataset"] == ds) & (per_step["backbone"] == bb)]
            written += conflict_figure(steps, grp, out / f"conflict_{ds}_{bb}", title=f"{ds} · {bb}")
            if args.conflict_layers:  # one figure per group of the summary, also when no layer was logged
                layers = _read(args.conflict_layers)
                layers = layers[(layers["dataset"] == ds) & (layers["backbone"] == bb)]
                written += conflict_layers_figure(layers, out / f"conflict_layers_{ds}_{bb}", title=f"{ds} · {bb}")
    main = _read(args.sensitivity_main) if args.sensitivity_main else None
    for path in args.sensitivity:
        written += sensitivity_figures(_read(path), out / Path(path).stem, main)
    if args.retention:
        for (ds, bb), grp in _read(args.retention).groupby(["dataset", "backbone"], sort=False):
            written += retention_figure(grp, out / f"retention_{ds}_{bb}", title=f"{ds} · {bb}")
    if args.convergence:
        for (ds, bb), grp in _read(args.convergence).groupby(["dataset", "backbone"], sort=False):
            written += convergence_figure(grp, out / f"convergence_{ds}_{bb}", title=f"{ds} · {bb}")
    if not written:
        raise ValueError("no table given: pass at least one of --main, --efficiency, --conflict, --sensitivity, "
                         "--retention, --convergence")
    print(f"figures: {len(written)} files in {out}")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--main", help="main.csv from aggregate")
    p.add_argument("--metric", default="ndcg@10", help="metric of the main results figure (default ndcg@10)")
    p.add_argument("--efficiency", help="efficiency.csv from aggregate --table efficiency")
    p.add_argument("--conflict", help="conflict.csv from aggregate --table conflict")
    p.add_argument("--conflict-summary", help="conflict_summary.csv from aggregate --table conflict")
    p.add_argument("--conflict-layers", help="conflict_layers.csv from aggregate --table conflict")
    p.add_argument("--sensitivity", nargs="*", default=[], help="CSV(s) with param, value, task, metric, mean, std")
    p.add_argument("--sensitivity-main", help="main.csv: the base run's seed-to-seed band in the sensitivity figures")
    p.add_argument("--retention", help="retention.csv from aggregate --table retention")
    p.add_argument("--convergence", help="convergence.csv from aggregate --table convergence")
    p.add_argument("--verbose", action="store_true", help="full tracebacks")
    return p


if __name__ == "__main__":
    args = build_parser().parse_args()
    try:
        run(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
