"""What every entry point shares: logging, clean error exits, the run context."""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from ..backbone import BackboneError
from ..config import ConfigError, Run, load_config, method_entry, run_train_settings
from ..data.format import DataFormatError, load_prepared
from ..methods.base import RunContext
from ..train import TrainingError

#: errors whose message already names the problem and the fix: printed without a traceback
USER_ERRORS = (ConfigError, DataFormatError, BackboneError, TrainingError, FileNotFoundError, KeyError, ValueError)


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


def main(fn, args: argparse.Namespace) -> None:
    """Run ``fn(args)``; turn known errors into one clear line on stderr and exit code 2."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fn(args)
    except USER_ERRORS as e:
        if args.verbose:
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def config_and_run(args) -> tuple[dict, Run]:
    config = load_config(args.config)
    for key, section in (("dataset", "datasets"), ("backbone", "backbones")):
        if getattr(args, key) not in config[section]:
            raise ConfigError(f"{key} {getattr(args, key)!r} is not in the config's `{section}`; "
                              f"known: {sorted(config[section])}")
    method_entry(config, args.run)  # a main-grid or sensitivity sweep run, or a ConfigError naming both
    return config, Run(args.dataset, args.backbone, args.run, args.seed)


def run_context(config: dict, run: Run, data_dir: str, run_dir: str) -> RunContext:
    spec = method_entry(config, run.run)
    backbone = {**config["backbones"][run.backbone], "cache_root": config["cache_dir"]}
    return RunContext(dataset=load_prepared(Path(data_dir)), run_dir=Path(run_dir), seed=run.seed,
                      hparams=spec.get("hparams", {}), train=run_train_settings(config, run.run),
                      backbone=backbone, device=config["device"])


@contextmanager
def staging_dir(final: Path):
    """Yield a temporary sibling directory that replaces ``final`` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
