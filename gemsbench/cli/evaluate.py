"""Evaluate one trained run on the configured split and protocols; write per-example rows and a summary."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_parquet
from ..evaluate import evaluate, evaluation_subset, summarise
from .common import add_run_args, build_run, config_and_run, main, parser

log = logging.getLogger(__name__)


def run(args) -> None:
    config, r = config_and_run(args)
    method, ctx = build_run(config, r, args.data, args.run_dir)
    ev = config["evaluate"]
    t0 = time.time()
    scorer = method.load_scorer(ctx)
    examples = evaluation_subset(ctx.dataset.splits[ev["split"]], ev["max_examples_per_task"])
    rows = evaluate(scorer, examples, ev["protocols"], ev["ks"], desc=f"evaluate {r.path}")
    summary = {"run": r.run, "method": method.name, "dataset": r.dataset,
               "backbone": r.backbone, "seed": r.seed, "split": ev["split"], "metrics": summarise(rows, ev["ks"]),
               "eval_seconds": round(time.time() - t0, 2), "examples": len(examples)}
    atomic_write_parquet(rows, Path(args.rows))
    atomic_write_json(summary, Path(args.summary))
    log.info("evaluated %s in %.1f s", r.path, summary["eval_seconds"])


if __name__ == "__main__":
    p = parser(__doc__)
    add_run_args(p)
    p.add_argument("--rows", required=True, help="per-example metric rows (parquet)")
    p.add_argument("--summary", required=True, help="summary JSON")
    main(run, p.parse_args())
