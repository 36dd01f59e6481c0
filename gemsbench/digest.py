"""The content digest of configuration sections: what a run, a cache entry or a rule's parameters depend on,
hashed so that a change of any of it is noticed (Snakemake re-runs a step whose digest changed; caches are keyed
by it). A leaf module: the backbone cache, the knowledge space and the config all use it."""
from __future__ import annotations

import hashlib
import json


def digest(obj) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as JSON with sorted keys (other values as their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
