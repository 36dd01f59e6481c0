"""Paired significance of the reference run (config `tables.reference`, default gems) against every other run.

Writes one CSV row per (dataset, backbone, protocol, task, metric, baseline run) with the mean difference, the
relative improvement, the paired t-test and Wilcoxon signed-rank p-values, raw and Holm-adjusted over each
(dataset, backbone, protocol, task) family of baselines x `tables.metrics`. See gemsbench/stats.py for the choices.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text
from ..config import load_config
from ..stats import COLUMNS, load_rows, significance_table
from .common import main, parser

log = logging.getLogger(__name__)


def run(args) -> None:
    config = load_config(args.config)
    settings = config["tables"]
    reference = args.reference or settings["reference"]
    out = Path(args.out)
    if not args.reference and reference not in config["methods"]:
        # a config without GEMS (a baseline-only sweep) is legitimate: the tables then carry no markers
        log.warning("reference run %r is not in this config's methods %s: no significance tests; set "
                    "tables.reference to one of them to get markers", reference, sorted(config["methods"]))
        table = pd.DataFrame(columns=COLUMNS)
    else:
        table = significance_table(load_rows(args.rows), reference, settings["metrics"], settings["alpha"])
        marked = table[table["marker"] != ""]
        log.info("%d comparisons of %r, %d significant after Holm (t-test, alpha %g)", len(table), reference,
                 len(marked), settings["alpha"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table.to_csv(index=False), out)
    print(f"significance: {out}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--rows", nargs="+", required=True, help="per-example rows files ({split}_rows.parquet)")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--reference", help="reference run (default: the config's tables.reference)")
    main(run, p.parse_args())
