"""What every entry point shares: logging, clean error exits, stopping with the process that started it, the run
context."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from typing import TYPE_CHECKING

from ..config import ConfigError, Run, load_config, method_entry, run_train_settings
from ..data.prepared import PreparedDataError
from ..errors import BackboneError, TrainingError

if TYPE_CHECKING:
    from ..methods.base import Method, RunContext

#: errors whose message already names the problem and the fix: printed without a traceback
USER_ERRORS = (ConfigError, PreparedDataError, BackboneError, TrainingError, FileNotFoundError, KeyError, ValueError)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML configuration (validated against the schema)")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--run", required=True,
                   help="run name: a key of `methods` in the config, or a sensitivity sweep run "
                        "({base}~{param}-{value})")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--run-dir", required=True, help="directory of this run (checkpoints, logs)")


class Terminated(SystemExit):
    """SIGTERM arrived (a cancelled job, or the parent process ended): raised where the program is, so it
    unwinds as on an error — temporary files removed, locks released, nothing half-written."""


def _terminate(signum, frame) -> None:
    raise Terminated(128 + signum)


def stop_with_parent(interval: float = 1.0) -> None:
    """Send this process SIGTERM once the process that started it has died (checked every ``interval`` seconds
    by a daemon thread: a dead parent's children are re-parented, so ``os.getppid()`` changes). A step whose
    Snakemake job or shell wrapper is killed then stops too, instead of running on as an orphan that trains
    into a run directory a rerun is already using and later writes outputs nobody waits for. (To keep a step
    running after its terminal closes, start it inside tmux or screen.)

    Not prctl(PR_SET_PDEATHSIG): the kernel sends that signal when the *thread* that started the process ends,
    and Snakemake starts jobs from worker threads — a job was killed that way after finishing its work."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def main(fn, args: argparse.Namespace) -> None:
    """Run ``fn(args)``; turn known errors into one clear line on stderr and exit code 2, and SIGTERM (also
    sent when the parent process dies) into an orderly exit with code 143."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    stop_with_parent()
    try:
        fn(args)
    except USER_ERRORS as e:
        if args.verbose:
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except Terminated:
        print("error: stopped by SIGTERM (the job was cancelled or the process that started it ended)",
              file=sys.stderr)
        raise


def config_and_run(args) -> tuple[dict, Run]:
    config = load_config(args.config)
    for key, section in (("dataset", "datasets"), ("backbone", "backbones")):
        if getattr(args, key) not in config[section]:
            raise ConfigError(f"{key} {getattr(args, key)!r} is not in the config's `{section}`; "
                              f"known: {sorted(config[section])}")
    method_entry(config, args.run)  # a main-grid or sensitivity sweep run, or a ConfigError naming both
    return config, Run(args.dataset, args.backbone, args.run, args.seed)


def build_run(config: dict, run: Run, data_dir: str, run_dir: str) -> tuple["Method", "RunContext"]:
    """The method of ``run`` (its config entry looked up once, hyper-parameters checked, defaults applied) and
    its complete run context: the prepared dataset, the run directory, the checked hyper-parameters, the run's
    training settings, the backbone (with the cache root), the device and the shared training loop. The one
    builder the train, evaluate and retention entry points use. The model stack (torch, transformers, the
    methods) is imported here rather than at module level, so the entry points that share this module but
    train nothing (prepare, aggregate) start without it."""
    from .. import train as training_loop
    from ..data.prepared import load_prepared
    from ..methods.base import RunContext
    from ..methods.registry import build_method

    spec = method_entry(config, run.run)
    method = build_method(spec["method"], spec.get("hparams", {}))
    backbone = {**config["backbones"][run.backbone], "cache_root": config["cache_dir"]}
    ctx = RunContext(dataset=load_prepared(Path(data_dir)), run_dir=Path(run_dir), seed=run.seed,
                     hparams=method.hparams, train=run_train_settings(config, run.run), backbone=backbone,
                     device=config["device"], loop=training_loop)
    return method, ctx
