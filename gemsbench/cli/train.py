"""Train one run (dataset, backbone, method entry, seed); resumes from the run's last checkpoint when it was
written for the same run spec. One trainer per run directory: a second one fails at once.

With ``--processes N`` (and ``--nodes M``) an LLM method trains data-parallel (:mod:`gemsbench.distributed`): the
process started plainly replaces itself by ``torchrun`` (and ``srun`` across nodes), which starts N processes per
node running this module again, the threads given to it shared out among them; rank 0 holds the lock and writes
every file. Methods that train outside the shared loop ignore ``--processes``. The DAG passes the config's
``processes``/``nodes`` as resources of the train rule, so changing them (or ``--cores``) never re-plans a finished
run."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from ..atomic import atomic_write_json
from ..config import digest, method_entry, run_spec
from ..distributed import DistributedError, launch_command, launched, slurm_allocation, under_launcher
from ..methods.base import LLMMethod
from ..methods.registry import method_class
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


def relaunch(args, config, r) -> None:
    """Replace this process by the run's ``args.processes`` × ``args.nodes`` trainer processes when several are
    asked for an LLM method and this process is not one of them yet; return otherwise."""
    processes, nodes = getattr(args, "processes", 1), getattr(args, "nodes", 1)  # run() called from Python
    if (processes, nodes) == (1, 1) or under_launcher():
        return
    if not issubclass(method_class(method_entry(config, r.run)["method"]), LLMMethod):
        return  # trains outside the shared loop: one process
    threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    try:
        command = launch_command(processes, nodes, [a for a in sys.argv[1:] if a != "--"], sys.executable,
                                 slurm_allocation() if nodes > 1 else None)
    except DistributedError as e:
        raise TrainingError(str(e)) from None
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
    log.info("starting %d process(es) on %d node(s): %s", processes, nodes, " ".join(command))
    logging.shutdown()
    os.execvpe(command[0], command, env)


def run(args) -> None:
    config, r = config_and_run(args)
    relaunch(args, config, r)
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
    p.add_argument("--processes", type=int, default=1,
                   help="processes per node training an LLM run data-parallel (torchrun; one per GPU)")
    p.add_argument("--nodes", type=int, default=1, help="nodes of a SLURM allocation (srun + torchrun per node)")
    argv = sys.argv[1:]
    # torchrun hands its child the arguments after its own `--` with that `--` still first
    main(run, p.parse_args(argv[1:] if argv[:1] == ["--"] else argv))
