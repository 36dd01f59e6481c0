"""Prepare one dataset of the config: raw files -> examples, splits, stored candidates, statistics."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..atomic import atomic_dir
from ..config import ConfigError, load_config
from ..data.registry import get_preparer
from .common import main, parser

log = logging.getLogger(__name__)


def run(args) -> None:
    config = load_config(args.config)
    if args.dataset not in config["datasets"]:
        raise ConfigError(f"dataset {args.dataset!r} is not in the config; known: {sorted(config['datasets'])}")
    spec = config["datasets"][args.dataset]
    prepare = get_preparer(spec["loader"])
    t0 = time.time()
    with atomic_dir(Path(args.out)) as tmp:
        prepare(dict(spec.get("params", {})), tmp)
    stats = json.loads((Path(args.out) / "stats.json").read_text())
    log.info("prepared %s in %.1f s: %s", args.dataset, time.time() - t0, stats)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="output directory of the prepared dataset")
    main(run, p.parse_args())
