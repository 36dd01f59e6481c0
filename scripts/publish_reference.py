"""Publish a finished run of the default DAG as the committed reference results, with its provenance.

    python scripts/publish_reference.py [--results results/<config>] [--out results/published/<config>]

Copies the tables (CSV, Markdown, LaTeX; each must be small) from ``{results}/tables`` to ``{out}/tables`` and
the resolved config to ``{out}/config.yaml``, and writes

* ``{out}/jobs.csv``: one row per job that snakemake benchmarked (stage, run, seed, wall seconds, peak RSS, CPU
  seconds, the load average the training run saw), read from ``{results}/benchmarks``;
* ``{out}/provenance.json``: the commits the runs were trained at (from their summaries) and the commit
  publishing them, the machine (CPU model, cores, memory, torch and its threads), and the wall time of each
  named target summed over its jobs (the aggregation and figure rules take seconds and have no benchmark file).

Nothing here is computed by hand: every figure comes from files the pipeline wrote. Figures are published by
the DAG's own ``figures`` target (``paper_figures/``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from gemsbench.atomic import atomic_dir

#: committed runs: results/published/<config>, one folder per config, named as the config's own results/<config>
PUBLISHED = Path("results/published")
MAX_BYTES = 2_000_000  # "nothing over a few MB" in the repository
TABLE_SUFFIXES = (".csv", ".md", ".tex")
#: benchmark folder -> the named target its jobs belong to (sweep runs are told apart by their run name)
STAGE_TARGET = {"train": "main_table", "evaluate": "main_table", "retention": "retention",
                "retention_base": "retention", "knowledge_space": "main_table"}
SWEEP_MARK = "~"  # sensitivity runs are named {base}~{param}-{value}


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        mem = None
    import torch
    return {"node": platform.node(), "cpu": cpu, "logical_cores": os.cpu_count(),
            "memory_gib": round(mem, 1) if mem else None, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def jobs(results: Path) -> list[dict]:
    """One row per benchmark TSV under {results}/benchmarks/{stage}/.../{name}.tsv."""
    rows = []
    root = results / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root).with_suffix("")
        stage, parts = rel.parts[0], rel.parts[1:]
        with open(path) as f:
            bench = list(csv.DictReader(f, delimiter="\t"))
        if not bench:
            continue
        b = bench[-1]
        run = parts[2] if len(parts) >= 4 else "/".join(parts)
        seed = parts[3].removeprefix("seed") if len(parts) >= 4 else ""
        summary = results / "runs" / Path(*parts[:3]) / parts[3] / "summary.json" if len(parts) >= 4 else None
        load = ""
        if stage == "train" and summary is not None and summary.exists():
            load = json.loads(summary.read_text()).get("load_average", "")
        target = STAGE_TARGET.get(stage, stage)
        if SWEEP_MARK in run and stage in ("train", "evaluate"):
            target = "sensitivity"
        rows.append({"stage": stage, "target": target, "run": run, "seed": seed,
                     "wall_seconds": round(float(b["s"]), 1), "max_rss_mib": b.get("max_rss", ""),
                     "cpu_seconds": b.get("cpu_time", ""), "load_average_start_end": load})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results/default"),
                   help="a config's results folder, results/<config> (default: results/default)")
    p.add_argument("--out", type=Path, help=f"where to publish it (default: {PUBLISHED}/<config>)")
    args = p.parse_args(argv)
    args.out = args.out or PUBLISHED / args.results.name
    tables = args.results / "tables"
    if not tables.is_dir():
        sys.exit(f"error: {tables} does not exist: run the DAG first (`snakemake --cores all`)")
    files = [f for f in sorted(tables.iterdir()) if f.suffix in TABLE_SUFFIXES]
    too_big = [f"{f} ({f.stat().st_size} bytes)" for f in files if f.stat().st_size > MAX_BYTES]
    if too_big:
        sys.exit(f"error: tables over {MAX_BYTES} bytes must not be committed: {too_big}")
    summaries = [json.loads(s.read_text()) for s in sorted((args.results / "runs").rglob("summary.json"))]
    job_rows = jobs(args.results)
    per_target = defaultdict(float)
    for r in job_rows:
        per_target[r["target"]] += r["wall_seconds"]
    out = args.out
    provenance = {
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "publishing_commit": git("rev-parse", "--short", "HEAD"),
        "trained_at_commits": sorted({s.get("commit", "unknown") for s in summaries}),
        "runs": len(summaries),
        "machine": machine(),
        "wall_seconds_per_target": {k: round(v, 1) for k, v in sorted(per_target.items())},
        "wall_seconds_all_jobs": round(sum(per_target.values()), 1),
        "note": ("Wall seconds per target sum the benchmarked jobs of that target (snakemake benchmark files; "
                 "aggregation and figure rules take seconds and are not benchmarked). main_table: data, "
                 "backbone cache, knowledge space, training and evaluation of the main grid; sensitivity: the "
                 "sweep runs; retention: the retention measurements. jobs.csv has every job."),
    }
    with atomic_dir(out) as staging:
        (staging / "tables").mkdir()
        for f in files:
            shutil.copy2(f, staging / "tables" / f.name)
        shutil.copy2(args.results / "config.yaml", staging / "config.yaml")
        if job_rows:
            with open(staging / "jobs.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(job_rows[0]))
                w.writeheader()
                w.writerows(job_rows)
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance["wall_seconds_per_target"], indent=2))
    print(f"published {len(files)} tables and {len(job_rows)} job timings to {out}")


if __name__ == "__main__":
    main()
