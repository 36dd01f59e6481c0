"""Load (and, for a GGUF file, dequantise into the cache once) a backbone; write a small manifest, with the special
tokens its tokenizer frames a text with."""
from __future__ import annotations

import time
from pathlib import Path

from ..atomic import atomic_write_json
from ..backbone import load_backbone
from ..config import ConfigError, load_config
from ..specials import SpecialTokens
from .common import main, parser


def run(args) -> None:
    config = load_config(args.config)
    if args.backbone not in config["backbones"]:
        raise ConfigError(f"backbone {args.backbone!r} is not in the config; known: {sorted(config['backbones'])}")
    spec = config["backbones"][args.backbone]
    t0 = time.time()
    bb = load_backbone(spec, Path(config["cache_dir"]))
    atomic_write_json({"backbone": args.backbone, "spec": spec, "architecture": type(bb.model).__name__,
                       "parameters": int(sum(p.numel() for p in bb.model.parameters())),
                       "vocabulary": len(bb.tokenizer), "encoder_decoder": bb.is_encoder_decoder,
                       "special_tokens": SpecialTokens.of(bb.tokenizer).describe(bb.tokenizer),
                       "load_seconds": round(time.time() - t0, 2)}, Path(args.out))


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--backbone", required=True)
    p.add_argument("--out", required=True, help="manifest JSON to write")
    main(run, p.parse_args())
