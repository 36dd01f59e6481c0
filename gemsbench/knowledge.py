"""The knowledge space of a backbone: second moments K of its targeted layers' features on general text.

GEMS's null-space projection (method.md §4) keeps updates out of the feature directions a backbone uses on
general-domain text. This module decides *which* K a run uses (:class:`KnowledgeSpace`), *where* it is cached
(:func:`knowledge_space_path`, the same function for the DAG rule and the method, so they agree), collects it
for both feature sides in one pass (:func:`collect_knowledge_space`), eigen-decomposes every K once
(:func:`ensure_eigendecompositions`: seconds per 1536×1536 K on a CPU, so no run repeats it) and summarises
the null spaces it implies (:func:`null_space_rows`, :func:`layer_type_summary`).

K is collected on the plain pre-trained backbone, without item tokens: general text never contains an item
token, and adding them only grows the embedding matrix — no targeted layer changes — so the K of the backbone
is the K of every run that fine-tunes it. Collection runs in float32 without autocast: K's small eigenvalues
decide the null space, and a bf16 forward would blur exactly those (its relative error, ~4e-3, is the size of
the eigenvalues near τ = 2e-2 on normalised features).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from gems import (NullSpaceInfo, collect_feature_moments, find_target_modules, null_space_info, second_moment_key,
                  symmetric_eigh)
from gems.nullspace import FEATURE_SIDES

from .atomic import DamagedFile, atomic_write
from .backbone import Backbone, load_backbone
from .digest import digest
from .corpus import CORPORA, batch_chunks, corpus_articles, tokenize_chunks
from .modeling import sequence_hidden
from .specials import SpecialTokens

log = logging.getLogger(__name__)

#: chunks per forward pass when collecting K; changes memory and speed, not K (beyond float summation order)
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class KnowledgeSpace:
    """Which K: the general-domain corpus, how many of its null-space articles, tokens kept per article.

    One cache file holds K of both feature sides (output and input) for every targeted layer: they come from
    the same forward passes, so collecting both costs far less than two collections."""

    corpus: str = "enwiki_gensim"
    articles: int = 64
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"knowledge corpus {self.corpus!r} is unknown; known: {CORPORA}")
        if self.articles < 1 or self.max_tokens < 1:
            raise ValueError(f"knowledge articles={self.articles} and max_tokens={self.max_tokens} must be >= 1")

    @property
    def stem(self) -> str:
        """File stem shared by the cache file and the DAG's report: ``{corpus}_{articles}_{max_tokens}``."""
        return f"{self.corpus}_{self.articles}_{self.max_tokens}"

    @property
    def corpus_label(self) -> str:
        """The corpus field of the cache keys: the token budget changes K, so it is part of it."""
        return f"{self.corpus}@{self.max_tokens}tok"


def backbone_id(spec: Mapping) -> str:
    """A name for a backbone's weights that does not depend on what a config calls it: its source plus a
    digest of its spec (the ``cache_root`` the harness adds is not part of it). Two configs that load the same
    backbone share its K; two tiny models of different widths never do."""
    spec = {k: v for k, v in spec.items() if k != "cache_root"}
    return f"{spec.get('source', 'unknown')}-{digest(spec)[:10]}"


def knowledge_space_path(cache_root: str | Path, backbone_spec: Mapping, space: KnowledgeSpace) -> Path:
    """``{cache_root}/knowledge/{backbone_id}/{stem}.safetensors``."""
    return Path(cache_root) / "knowledge" / backbone_id(backbone_spec) / f"{space.stem}.safetensors"


def knowledge_batches(tokenizer, space: KnowledgeSpace, batch_size: int = DEFAULT_BATCH_SIZE,
                      is_encoder_decoder: bool = False) -> list[dict]:
    """Padded batches of the lead ``max_tokens`` tokens of each of the first ``articles`` null-space articles,
    each framed as the backbone's tokenizer frames a text (:meth:`gemsbench.specials.SpecialTokens.text`: a
    Gemma or Llama-3 model reads its beginning-of-text token first, a T5 encoder its EOS last), so K holds the
    features of inputs as the model meets them.

    An encoder-decoder gets the same text as decoder input (shifted by the model from ``labels``), so its
    decoder layers see general text too. Decoder-only batches ask for no KV cache (it is never reused)."""
    texts = [a.text for a in corpus_articles(space.corpus, "nullspace", space.articles)]
    specials = SpecialTokens.of(tokenizer)
    chunks = [specials.text(chunk) for chunk in tokenize_chunks(tokenizer, texts, space.max_tokens)]
    batches = []
    for batch in batch_chunks(chunks, batch_size, tokenizer.pad_token_id):
        if is_encoder_decoder:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            batch["decoder_attention_mask"] = batch["attention_mask"]
        else:
            batch["use_cache"] = False
        batches.append(batch)
    return batches


class EncoderDecoderStacks(nn.Module):
    """An encoder-decoder's encoder and decoder stacks, called with a knowledge batch (``labels`` shifted right
    into decoder inputs as the model itself shifts them), without the vocabulary head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                decoder_attention_mask: Tensor) -> Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "decoder_input_ids": self.model.prepare_decoder_input_ids_from_labels(labels=labels),
                 "decoder_attention_mask": decoder_attention_mask}
        return sequence_hidden(self.model, batch, is_encoder_decoder=True)


def collect_knowledge_space(model: nn.Module, tokenizer, space: KnowledgeSpace, is_encoder_decoder: bool,
                            batch_size: int = DEFAULT_BATCH_SIZE,
                            progress: bool = False) -> tuple[dict[str, dict[str, Tensor]], int]:
    """(side -> layer name -> float32 K, number of tokens), layers named as :func:`gems.find_target_modules`
    names them on ``model``.

    The model runs without its vocabulary head (a decoder-only model through its decoder body, an
    encoder-decoder through :class:`EncoderDecoderStacks`): the head is not a targeted layer and its logits
    (tokens × 49k for SmolLM2, × 250k for mT5) would cost more than the layers that matter."""
    modules = find_target_modules(model)
    body = EncoderDecoderStacks(model) if is_encoder_decoder else model.get_decoder()
    batches = knowledge_batches(tokenizer, space, batch_size, is_encoder_decoder)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return collect_feature_moments(body, modules, batches, FEATURE_SIDES, progress=progress), tokens


def save_tensors(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """A safetensors cache file of float32 CPU tensors, written atomically."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


@contextmanager
def open_cache(path: Path, remedy: str) -> Iterator:
    """A safetensors cache file opened for reading; one that does not open (truncated, overwritten) is a
    :class:`~gemsbench.atomic.DamagedFile` whose message ends with ``remedy``."""
    try:
        stored = safe_open(str(path), framework="pt")
    except Exception as e:  # noqa: BLE001 - any failure to read the header means the file is unusable
        raise DamagedFile(path, e, remedy) from e
    with stored:
        yield stored


def knowledge_remedy(path: Path) -> str:
    return (f"delete it and {eigen_path(path)}; the next training run of a method that projects against it, "
            "or the DAG's knowledge_space rule, collects it again")


def save_knowledge_space(path: Path, backbone_spec: Mapping, space: KnowledgeSpace,
                         moments: Mapping[str, Mapping[str, Tensor]]) -> None:
    bid = backbone_id(backbone_spec)
    save_tensors(path, {second_moment_key(bid, name, space.corpus_label, space.articles, side): K
                        for side, per_layer in moments.items() for name, K in per_layer.items()})


def load_knowledge_space(path: Path, backbone_spec: Mapping, space: KnowledgeSpace, side: str,
                         layers: Iterable[str]) -> dict[str, Tensor]:
    """K of one side for each named layer from the cache file (read alone: the file holds both sides, over a
    GB for SmolLM2); a layer the file lacks is an error naming the fix."""
    bid = backbone_id(backbone_spec)
    keys = {name: second_moment_key(bid, name, space.corpus_label, space.articles, side) for name in layers}
    with open_cache(path, knowledge_remedy(path)) as stored:
        missing = [name for name, key in keys.items() if key not in stored.keys()]
        if missing:
            raise ValueError(f"{path} holds no K for {len(missing)} targeted layer(s), e.g. {missing[:3]}: it was "
                             "made for another model or target list; delete it to have it collected again")
        return {name: stored.get_tensor(key) for name, key in keys.items()}


def ensure_knowledge_space(backbone_spec: Mapping, cache_root: str | Path, space: KnowledgeSpace,
                           batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                           backbone: Backbone | None = None) -> tuple[Path, dict | None]:
    """The cache file of ``space`` for this backbone, collected first if it does not exist yet.

    Returns (path, {"seconds", "tokens"} of the collection, or None when the file was already there). Without
    ``backbone`` it loads its own copy (RNG state preserved), so the caller's model is never touched; a given
    ``backbone`` must be the plain pre-trained one."""
    path = knowledge_space_path(cache_root, backbone_spec, space)
    if path.exists():
        return path, None
    if backbone is None:
        with torch.random.fork_rng():
            backbone = load_backbone(dict(backbone_spec), Path(cache_root))
    start = time.perf_counter()
    moments, tokens = collect_knowledge_space(backbone.model, backbone.tokenizer, space,
                                              backbone.is_encoder_decoder, batch_size, progress)
    seconds = time.perf_counter() - start
    save_knowledge_space(path, backbone_spec, space, moments)
    log.info("knowledge space %s (%d layers, both sides, %d tokens) collected in %.1f s -> %s", space.stem,
             len(moments["output"]), tokens, seconds, path)
    return path, {"seconds": round(seconds, 2), "tokens": tokens}


def eigen_path(path: Path) -> Path:
    """Where the eigendecompositions of a K file live: beside it, ``{stem}.eigh.safetensors``."""
    return path.with_name(f"{path.name.removesuffix('.safetensors')}.eigh.safetensors")


def ensure_eigendecompositions(path: Path) -> tuple[Path, float | None]:
    """Eigen-decompose every K in the cache file at ``path`` once (ascending eigenvalues and eigenvectors,
    keys ``{K key}::values`` / ``::vectors``); returns (eigen file, seconds, or None when it was cached)."""
    target = eigen_path(path)
    if target.exists():
        return target, None
    start = time.perf_counter()
    decompositions = {}
    with open_cache(path, knowledge_remedy(path)) as stored:
        for key in stored.keys():
            values, vectors = symmetric_eigh(stored.get_tensor(key))
            decompositions.update({f"{key}::values": values, f"{key}::vectors": vectors})
    save_tensors(target, decompositions)
    seconds = time.perf_counter() - start
    log.info("%d second-moment matrices eigen-decomposed in %.1f s -> %s", len(decompositions) // 2, seconds,
             target)
    return target, round(seconds, 2)


def load_eigendecompositions(path: Path, backbone_spec: Mapping, space: KnowledgeSpace, side: str,
                             layers: Iterable[str], vectors: bool = True) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Layer -> (eigenvalues, eigenvectors or None) of one side's K, from the file made by
    :func:`ensure_eigendecompositions` for the K file at ``path``."""
    bid = backbone_id(backbone_spec)
    keys = {name: second_moment_key(bid, name, space.corpus_label, space.articles, side) for name in layers}
    remedy = f"delete it; it is made again from {path} by the next run that needs it"
    with open_cache(eigen_path(path), remedy) as stored:
        present = set(stored.keys())
        missing = [name for name, key in keys.items() if f"{key}::values" not in present]
        if missing:
            raise ValueError(f"{eigen_path(path)} holds no decomposition for {len(missing)} targeted layer(s), "
                             f"e.g. {missing[:3]}: delete it and {path} to have both made again")
        return {name: (stored.get_tensor(f"{key}::values"),
                       stored.get_tensor(f"{key}::vectors") if vectors else None) for name, key in keys.items()}


def layer_type(name: str) -> str:
    """The kind of a targeted layer: the last component of its name (q_proj, gate_proj, wo, ...)."""
    return name.rsplit(".", 1)[-1]


def null_space_rows(spectra: Mapping[str, Mapping[str, Tensor]], rules: Iterable[tuple[str, float]],
                    fallback_fraction: float | None = None) -> list[dict]:
    """One row per (side, rule, layer) from K's eigenvalues (side -> layer -> ascending eigenvalues): the
    decision :func:`gems.null_space_projector` would take."""
    rules = list(rules)
    rows = []
    for side, per_layer in spectra.items():
        for name, eigenvalues in per_layer.items():
            for rule, value in rules:
                option = {"tau": value} if rule == "threshold" else {"energy": value}
                info = null_space_info(eigenvalues, rule, fallback_fraction=fallback_fraction, **option)
                rows.append(null_space_row(name, side, rule, value, info))
    return rows


def null_space_row(layer: str, side: str, rule: str, value: float, info: NullSpaceInfo) -> dict:
    return {"layer": layer, "layer_type": layer_type(layer), "side": side, "rule": rule, "value": value,
            **asdict(info)}


def layer_type_summary(rows: Iterable[Mapping]) -> list[dict]:
    """Per (side, rule, value, layer type): mean null dimension over its layers, feature dimension, share."""
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for row in rows:
        groups[(row["side"], row["rule"], row["value"], row["layer_type"])].append(row)
    summary = []
    for (side, rule, value, kind), members in groups.items():
        mean_null = sum(r["null_dim"] for r in members) / len(members)
        total = members[0]["total_dim"]
        summary.append({"side": side, "rule": rule, "value": value, "layer_type": kind, "layers": len(members),
                        "mean_null_dim": round(mean_null, 2), "total_dim": total,
                        "null_share": round(mean_null / total, 4),
                        "min_null_dim": min(r["null_dim"] for r in members),
                        "max_null_dim": max(r["null_dim"] for r in members),
                        "empty_layers": sum(r["null_dim"] == 0 for r in members),
                        "fallback_layers": sum(bool(r["fallback_used"]) for r in members)})
    return summary
