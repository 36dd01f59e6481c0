"""Make one results table from saved run outputs: ``--table NAME`` is a table of the registry
(gemsbench/analysis/registry.py: ``TABLES[NAME]`` says which inputs it reads and which files it writes into
``--out-dir``). The inputs are given as ``--<argument> PATH...``:

* ``--summaries``: evaluation summaries (main, sensitivity) or training ``summary.json`` files (efficiency,
  conflict, convergence);
* ``--rows``: per-example evaluation rows (significance);
* ``--significance``: the significance CSV (main table markers, optional);
* ``--main``: the main table's CSV (ablation);
* ``--retention``: retention JSONs of runs and of their pre-trained backbones (retention).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..analysis.registry import TABLES
from ..config import load_config
from .common import main, parser

log = logging.getLogger(__name__)


def input_arguments() -> list[str]:
    """Every input argument of a registered table, in registry order."""
    return list(dict.fromkeys(arg for table in TABLES.values() for arg in table.inputs))


def run(args) -> str:
    table = TABLES[args.table]
    given = {arg: [Path(p) for p in (getattr(args, arg, None) or [])] for arg in input_arguments()}
    table.check_inputs(given)
    config = load_config(args.config)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    message = table.make(config, {arg: paths for arg, paths in given.items() if paths}, out)
    print(message)
    return message


def build_parser():
    p = parser(__doc__)
    p.add_argument("--table", choices=list(TABLES), default="main")
    for arg in input_arguments():
        p.add_argument(f"--{arg}", nargs="+", default=[], help=", ".join(
            f"{name}: {table.inputs[arg]}" for name, table in TABLES.items() if arg in table.inputs))
    p.add_argument("--out-dir", required=True)
    return p


if __name__ == "__main__":
    main(run, build_parser().parse_args())
