"""Collect (or read from the cache) a backbone's knowledge space and report the null spaces it implies.

Writes, under ``--out-dir``: ``{stem}.json`` (settings, cache files, collection and decomposition times, null
dimension of every layer for each side and reported rule, and the per-layer-type summary), ``{stem}_layers.csv``
and ``{stem}_by_type.csv``, where ``{stem}`` is ``{corpus}_{articles}_{max_tokens}``. The second moments and
their eigendecompositions go to the shared cache (``{cache_dir}/knowledge/{backbone id}/{stem}.safetensors`` and
``{stem}.eigh.safetensors``), where training runs find them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from gems import find_target_modules
from gems.nullspace import FEATURE_SIDES

from ..atomic import atomic_write_json, atomic_write_text
from ..backbone import load_backbone
from ..config import ConfigError, load_config
from ..knowledge import (KnowledgeSpace, backbone_id, ensure_eigendecompositions, ensure_knowledge_space,
                         layer_type_summary, load_eigendecompositions, null_space_rows)
from .common import main, parser

log = logging.getLogger(__name__)


def run(args) -> None:
    config = load_config(args.config)
    if args.backbone not in config["backbones"]:
        raise ConfigError(f"backbone {args.backbone!r} is not in the config; known: {sorted(config['backbones'])}")
    settings = config["knowledge"]
    spec = config["backbones"][args.backbone]
    space = KnowledgeSpace(args.corpus, args.articles, args.max_tokens)
    start = time.perf_counter()
    bb = load_backbone(spec, Path(config["cache_dir"]))  # plain backbone: general text has no item tokens
    path, collected = ensure_knowledge_space(spec, config["cache_dir"], space, settings["batch_size"],
                                             progress=True, backbone=bb)
    _, decomposed = ensure_eigendecompositions(path)
    layers = list(find_target_modules(bb.model))
    spectra = {side: {name: values for name, (values, _) in
                      load_eigendecompositions(path, spec, space, side, layers, vectors=False).items()}
               for side in FEATURE_SIDES}
    rules = [("threshold", tau) for tau in settings["report_tau"]] + \
            [("energy", energy) for energy in settings["report_energy"]]
    rows = null_space_rows(spectra, rules)
    summary = layer_type_summary(rows)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pd.DataFrame(rows).to_csv(index=False), out / f"{space.stem}_layers.csv")
    atomic_write_text(pd.DataFrame(summary).to_csv(index=False), out / f"{space.stem}_by_type.csv")
    atomic_write_json({"backbone": args.backbone, "backbone_id": backbone_id(spec), "cache_file": str(path),
                       "corpus": space.corpus, "articles": space.articles, "max_tokens": space.max_tokens,
                       "collection": collected or "read from cache",
                       "eigendecomposition_seconds": decomposed or "read from cache",
                       "threads": torch.get_num_threads(),
                       "seconds_total": round(time.perf_counter() - start, 2), "rules": rules,
                       "by_layer_type": summary, "layers": rows}, out / f"{space.stem}.json")
    for entry in summary:
        log.info("%s side, %s %g, %s: null %.1f / %d", entry["side"], entry["rule"], entry["value"],
                 entry["layer_type"], entry["mean_null_dim"], entry["total_dim"])


if __name__ == "__main__":
    defaults = KnowledgeSpace()
    p = parser(__doc__)
    p.add_argument("--backbone", required=True, help="a key of `backbones` in the config")
    p.add_argument("--corpus", default=defaults.corpus)
    p.add_argument("--articles", type=int, default=defaults.articles, help="null-space articles to use")
    p.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="tokens kept per article")
    p.add_argument("--out-dir", required=True, help="directory for the report (JSON and CSVs)")
    main(run, p.parse_args())
