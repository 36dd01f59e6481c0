"""Aggregate evaluation summaries into the main results table (CSV and Markdown per dataset and protocol)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import load_config
from ..tables import collect, markdown_table, seed_summary
from .common import main, parser

log = logging.getLogger(__name__)


def _write(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(args) -> None:
    config = load_config(args.config)
    labels = {run: spec.get("label", run) for run, spec in config["methods"].items()}
    long = collect([Path(p) for p in args.summaries], labels)
    summary = seed_summary(long)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(long.to_csv(index=False), out / "main_per_seed.csv")
    _write(summary.to_csv(index=False), out / "main.csv")
    parts = []
    for (dataset, backbone, protocol), grp in summary.groupby(["dataset", "backbone", "protocol"], sort=False):
        title = f"{dataset} · {backbone} · {protocol} protocol · {config['evaluate']['split']} split"
        parts.append(markdown_table(grp, config["tables"]["metrics"], title))
    _write("\n".join(parts), out / "main.md")
    print(f"main table: {out / 'main.md'} (CSV: {out / 'main.csv'})")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--summaries", nargs="+", required=True, help="evaluation summary JSON files")
    p.add_argument("--out-dir", required=True)
    main(run, p.parse_args())
