"""Draw the paper figures from saved CSV tables only (no config, no model, no training outputs needed).

Each CSV given draws its figures into --out-dir, as PDF and PNG:

* --main main.csv                      -> main_{dataset}_{backbone}_{protocol}  (--metric per method and task)
* --efficiency efficiency.csv          -> efficiency_{dataset}_{backbone}       (time per step, peak memory)
* --conflict conflict.csv --conflict-summary conflict_summary.csv
                                       -> conflict_{dataset}_{backbone}         (gradient cosines, negative share)
* --sensitivity sweep.csv [...]        -> {csv name}                            (metric vs hyper-parameter value)

It deliberately avoids importing the training stack (torch, transformers), so redrawing takes seconds.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import pandas as pd

from ..figures import conflict_figure, efficiency_figure, main_results_figure, sensitivity_figure


def _read(path: str) -> pd.DataFrame:
    if not Path(path).exists():
        raise FileNotFoundError(f"table {path} does not exist; run `snakemake` for the tables first")
    return pd.read_csv(path)


def run(args) -> list[Path]:
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
    for path in args.sensitivity:
        written += sensitivity_figure(_read(path), out / Path(path).stem)
    if not written:
        raise ValueError("no table given: pass at least one of --main, --efficiency, --conflict, --sensitivity")
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
    p.add_argument("--sensitivity", nargs="*", default=[], help="CSV(s) with param, value, task, metric, mean, std")
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
