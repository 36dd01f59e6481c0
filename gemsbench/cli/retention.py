"""Knowledge retention of one trained LLM run, or of the pre-trained backbone (``--base``): perplexity on held-out
Wikipedia articles and factual cloze accuracy (the rules are in gemsbench/retention.py).

* run mode: loads the run's best checkpoint exactly as evaluation does (``method.load_scorer``: backbone, item
  tokens, the method's adapters, ``checkpoint/best.pt``) and writes ``--out`` (default ``RUN_DIR/retention.json``).
* ``--base``: the plain pre-trained backbone with the dataset's item tokens added as the runs add them (the shared
  ``train.item_init``, seeded with the config's first seed, which matters for ``random`` only), under the shared
  ``train.precision``; once per (dataset, backbone). Its scores are the "before" of the retention table.

Only LLM methods (those fine-tuning the backbone) have a retention measurement; the others are refused.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_json
from ..backbone import add_item_tokens, load_backbone
from ..config import ConfigError, load_config, method_entry
from ..data.prepared import load_prepared
from ..methods.base import LLMMethod, RunContext
from ..methods.registry import method_class
from ..retention import RetentionSettings, retention_metrics
from ..train import LLMScorer, TrainSettings, resolve_device
from .common import build_run, config_and_run, main, parser

log = logging.getLogger(__name__)


def run_retention(method: LLMMethod, ctx: RunContext, settings: RetentionSettings) -> dict:
    """Retention metrics of a trained run, its best checkpoint loaded as evaluation loads it."""
    scorer = method.load_scorer(ctx)  # a TrainingError naming the fix when checkpoint/best.pt is missing
    if not isinstance(scorer, LLMScorer):
        raise TypeError(f"method {method.name!r} gave a {type(scorer).__name__}, not an LLMScorer: retention "
                        "needs the fine-tuned language model")
    b = scorer.b
    text_vocab = int(b.item_ids[0]) if len(b.item_ids) else b.model.get_output_embeddings().weight.shape[0]
    return retention_metrics(b.model, b.encoder.tok, text_vocab, settings, b.is_encoder_decoder, scorer.precision,
                             method)


def base_retention(backbone: dict, titles: list[str], train: TrainSettings, settings: RetentionSettings,
                   seed: int, device: str) -> dict:
    """Retention metrics of the pre-trained backbone with item tokens added as :func:`gemsbench.train.build` adds
    them (same seeding), without any method's wrapping."""
    torch.manual_seed(seed)
    bb = load_backbone(backbone, Path(backbone.get("cache_root", "cache")))
    add_item_tokens(bb, titles, train.item_init, seed=seed)
    bb.model.to(resolve_device(device))
    return retention_metrics(bb.model, bb.tokenizer, bb.item_token_ids[0], settings, bb.is_encoder_decoder,
                             train.precision)


def _check_llm(config: dict, run: str) -> None:
    entry = method_entry(config, run)
    if not issubclass(method_class(entry["method"]), LLMMethod):
        raise ConfigError(f"run {run!r} uses method {entry['method']!r}, which fine-tunes no language model: "
                          "knowledge retention applies to LLM runs only")


def run(args) -> None:
    t0 = time.perf_counter()
    settings = None
    if args.base:
        config = load_config(args.config)
        for key, section in (("dataset", "datasets"), ("backbone", "backbones")):
            if getattr(args, key) not in config[section]:
                raise ConfigError(f"{key} {getattr(args, key)!r} is not in the config's `{section}`; "
                                  f"known: {sorted(config[section])}")
        if not args.out:
            raise ConfigError("--base needs --out (where base.json goes)")
        settings = RetentionSettings.from_dict(config["retention"])
        dataset = load_prepared(Path(args.data))
        seed = config["seeds"][0]
        backbone = {**config["backbones"][args.backbone], "cache_root": config["cache_dir"]}
        metrics = base_retention(backbone, dataset.items["title"].fillna("").tolist(),
                                 TrainSettings.from_dict(config["train"]), settings, seed, config["device"])
        head = {"kind": "base", "run": None, "method": None, "dataset": args.dataset, "backbone": args.backbone,
                "seed": seed}
        out = Path(args.out)
    else:
        missing = [f"--{k.replace('_', '-')}" for k in ("run", "seed", "run_dir") if getattr(args, k) is None]
        if missing:
            raise ConfigError(f"run mode needs {' '.join(missing)} (or pass --base for the pre-trained backbone)")
        config, r = config_and_run(args)
        _check_llm(config, r.run)
        settings = RetentionSettings.from_dict(config["retention"])
        method, ctx = build_run(config, r, args.data, args.run_dir)
        metrics = run_retention(method, ctx, settings)
        head = {"kind": "run", "run": r.run, "method": method.name, "dataset": r.dataset,
                "backbone": r.backbone, "seed": r.seed}
        out = Path(args.out) if args.out else Path(args.run_dir) / "retention.json"
    result = {**head, **metrics, "device": resolve_device(config["device"]), "threads": torch.get_num_threads(),
              "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(result, out)
    log.info("retention of %s: perplexity %.3f, cloze accuracy %.3f (%d probes) in %.1f s -> %s",
             head["run"] or f"{args.backbone} (base)", result["ppl"], result["cloze_accuracy"], result["probes"],
             result["seconds"], out)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--dataset", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--data", required=True, help="prepared dataset directory (its item titles give the item tokens)")
    p.add_argument("--base", action="store_true", help="measure the pre-trained backbone (with item tokens)")
    p.add_argument("--run", help="run name: a key of `methods` in the config (run mode)")
    p.add_argument("--seed", type=int, help="training seed of the run (run mode)")
    p.add_argument("--run-dir", help="directory of the trained run (run mode)")
    p.add_argument("--out", help="output JSON (run mode default: RUN_DIR/retention.json; required with --base)")
    main(run, p.parse_args())
