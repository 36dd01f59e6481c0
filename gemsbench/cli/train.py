"""Train one run (dataset, backbone, method entry, seed); resumes from the run's last checkpoint."""
from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path

import torch

from ..config import digest, method_entry, run_spec
from ..data.format import atomic_write_json
from ..methods.registry import build_method
from .common import add_run_args, config_and_run, main, parser, run_context

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args) -> None:
    config, r = config_and_run(args)
    ctx = run_context(config, r, args.data, args.run_dir)
    method = build_method(method_entry(config, r.run)["method"], ctx.hparams)
    ctx.hparams = method.hparams
    torch.manual_seed(r.seed)
    summary = method.fit(ctx)
    summary.update(run=r.run, dataset=r.dataset, backbone=r.backbone, seed=r.seed, spec=run_spec(config, r),
                   spec_digest=digest(run_spec(config, r)), commit=git_commit(), machine=platform.node(),
                   torch=torch.__version__, threads=torch.get_num_threads())
    atomic_write_json(summary, Path(args.run_dir) / "summary.json")
    log.info("trained %s in %.1f s", r.path, summary.get("wall_seconds") or summary.get("train_seconds", 0))


if __name__ == "__main__":
    p = parser(__doc__)
    add_run_args(p)
    main(run, p.parse_args())
