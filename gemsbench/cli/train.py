"""Train one run (dataset, backbone, method entry, seed); resumes from the run's last checkpoint when it was
written for the same run spec. One trainer per run directory: a second one fails at once.

Started by ``torchrun`` with several processes, an LLM method trains data-parallel (:mod:`gemsbench.distributed`):
rank 0 holds the lock and writes every file."""
from __future__ import annotations

import logging
import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch

from ..atomic import atomic_write_json
from ..config import digest, run_spec
from ..distributed import launched
from ..methods.base import LLMMethod
from ..locks import LockBusy, file_lock
from ..train import TrainingError
from .common import add_run_args, build_run, config_and_run, main, parser

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: the lock file, in the run directory, that one trainer holds for its whole training
LOCK_NAME = ".train.lock"


@contextmanager
def training_lock(run_dir: Path, held: bool = True):
    """Hold the run directory's lock for the block; a second trainer of the same directory fails at once,
    naming the one that holds it (two would overwrite each other's checkpoints). ``held=False`` (the other
    processes of a multi-process run, whose rank 0 holds it) takes no lock."""
    if not held:
        yield
        return
    try:
        with file_lock(Path(run_dir) / LOCK_NAME, wait=False):
            yield
    except LockBusy as e:
        raise TrainingError(f"another trainer ({e.holder or 'unknown process'}) is training into {run_dir}: "
                            f"wait for it to finish, or stop it and rerun (two trainers would overwrite each "
                            f"other's checkpoints; lock file {e.path})") from None


def run(args) -> None:
    config, r = config_and_run(args)
    world = launched()
    with training_lock(Path(args.run_dir), held=world.main):
        method, ctx = build_run(config, r, args.data, args.run_dir)
        if world.size > 1 and not isinstance(method, LLMMethod):
            raise TrainingError(f"method {method.name!r} trains outside the shared loop, in one process only, but "
                                f"{world.size} processes were started: start it without torchrun (the DAG does so "
                                "for such methods whatever the config's `processes`)")
        torch.manual_seed(r.seed)
        summary = method.fit(ctx)
        summary.update(run=r.run, dataset=r.dataset, backbone=r.backbone, seed=r.seed, spec=run_spec(config, r),
                       spec_digest=digest(run_spec(config, r)), commit=git_commit(), machine=platform.node(),
                       torch=torch.__version__, threads=torch.get_num_threads())
        if world.main:
            atomic_write_json(summary, Path(args.run_dir) / "summary.json")
    log.info("trained %s in %.1f s", r.path, summary.get("wall_seconds") or summary.get("train_seconds", 0))


if __name__ == "__main__":
    p = parser(__doc__)
    add_run_args(p)
    main(run, p.parse_args())
