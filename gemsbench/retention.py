"""Knowledge retention: how much general-domain knowledge a fine-tuned backbone keeps (the paper's Fig. 1b claim).

Two measurements of one loaded language model, both on the general-domain corpus of protocol.md (gensim's
Wikipedia excerpt and analogy questions, :mod:`gemsbench.corpus`), neither of which any run trains on:

Perplexity on held-out articles
    The lead ``max_tokens`` text tokens of each of the first ``articles`` articles of the ``drift`` split —
    disjoint from the ``nullspace`` articles the knowledge space of the null-space projection is built from — one
    chunk per article (:func:`gemsbench.corpus.tokenize_chunks`), framed as the backbone's tokenizer frames a text
    (:meth:`gemsbench.specials.SpecialTokens.text`: Gemma and Llama-3 put their beginning-of-text token in front,
    T5 closes it with EOS, SmolLM2 and Qwen2.5 add nothing). A decoder-only model reads each chunk as one sequence
    and predicts every token from the tokens before it (the chunk's first token is context only: its BOS where the
    family has one), exactly as ``model(**tokenizer(text))`` scores a text that fits in ``max_tokens``.
    ``ppl = exp(Σ NLL / N)`` over all N predicted tokens of all chunks: a token-weighted mean, not a mean of
    per-article perplexities.

Factual cloze accuracy
    Probes "a b c d" of the factual sections of questions-words.txt (capitals, currencies, US cities' states).
    Each evaluated probe becomes the prompt ``"{a} is to {b} as {c} is to"`` and a multiple choice among the
    candidate answers of its section: every distinct ``d`` of that section in the file (23 countries for
    capital-common-countries, 116 for capital-world, 28 currencies, 27 states), whatever probes are evaluated;
    the probe's own words are not removed from the choices. A candidate's score is the summed log-probability of
    the tokens of ``" " + candidate`` (tokenised on its own, without special tokens) following the prompt (with
    the backbone's prefix tokens in front of it, :meth:`gemsbench.specials.SpecialTokens.prompt`). A probe counts
    as correct when its true answer scores strictly higher than every other candidate; a tie counts as wrong. At most
    ``probes_per_section`` probes are evaluated per section, a subset drawn once with a fixed seed (0, not the
    run's), identical for every run and for the base model. The overall accuracy is the share of all evaluated
    probes answered correctly (micro average; the sections hold equally many probes when each has enough).

Vocabulary
    Every log-probability above normalises over the backbone's own vocabulary (token ids below the first item
    token). Item tokens never occur in general text, and leaving them out of the normaliser makes adding them —
    with any initialisation — change no general-text score: the pre-trained backbone scores the same with or
    without them. What a fine-tuned model puts on item tokens while reading general text is reported beside
    it: ``ppl_full_vocab`` (softmax over the whole enlarged vocabulary) and ``item_token_mass`` (the mean total
    probability of the item tokens at the predicted positions).

Encoder-decoder (T5) backbones
    Perplexity is the decoder NLL of each framed chunk (T5: closed by EOS, as its tokenizer makes labels) given
    the empty text as encoder input (what the tokenizer makes of ``""``: T5's EOS; the EOS or pad token when it
    makes nothing): the decoder predicts every token of the chunk, the first from the decoder start token.
    A T5 pre-trained on span corruption is no language model of plain text, so its absolute perplexity means
    little; its change under fine-tuning is still a drift measure. Cloze: the prompt, closed as the tokenizer
    closes a text, is the encoder input and the decoder scores each candidate from the start token.

Adapters and routing
    The model is evaluated as evaluation uses it, adapters active. Before every forward pass the method's
    ``before_forward`` hook receives a batch whose every token and example carry the recommendation task id
    (0): general text is routed as recommendation. That matters for MoE-LoRA only (its gate is driven by the
    task id); HydraLoRA's router reads the tokens themselves, and the other methods ignore the hook.

Precision: the forward passes run under the run's training precision (bf16 autocast when it trained in bf16,
via :func:`gemsbench.modeling.autocast`); log-probabilities are taken in float32 and summed in float64. The output
head runs on the predicted positions only, in slices of bounded size (:func:`gemsbench.modeling.head_map`).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .corpus import DRIFT_ARTICLES, Probe, batch_chunks, corpus_articles, load_probes, tokenize_chunks
from .formats import TASK_ID
from .modeling import autocast, decoder_body, head_map, sequence_hidden
from .specials import SpecialTokens

log = logging.getLogger(__name__)

#: the general-domain corpus whose ``drift`` split is read (the one protocol.md names)
CORPUS = "enwiki_gensim"
#: task id every general-text token is routed as (see "Adapters and routing" above)
GENERAL_TEXT_TASK = TASK_ID["rec"]
#: seed of the per-section probe subset (fixed: every run and the base see the same probes)
PROBE_SEED = 0


@dataclass(frozen=True)
class RetentionSettings:
    """The ``retention`` section of the config (defaults and descriptions in workflow/schemas/config.schema.yaml;
    tests/test_defaults.py pins these to the schema's). The defaults measure SmolLM2-135M on about 6,600 article
    tokens and 200 probes: enough for a perplexity and an accuracy that separate the methods."""

    articles: int = DRIFT_ARTICLES
    max_tokens: int = 256
    probes_per_section: int = 50
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.articles <= DRIFT_ARTICLES:
            raise ValueError(f"retention.articles={self.articles}: the drift split holds {DRIFT_ARTICLES} "
                             f"articles; choose 1..{DRIFT_ARTICLES}")
        if self.max_tokens < 2:
            raise ValueError(f"retention.max_tokens={self.max_tokens} must be >= 2 (one token of context, one "
                             "to predict)")
        if self.probes_per_section < 1 or self.batch_size < 1:
            raise ValueError(f"retention.probes_per_section={self.probes_per_section} and "
                             f"retention.batch_size={self.batch_size} must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping) -> "RetentionSettings":
        return cls(**measurement_section(d))


def measurement_section(section: Mapping) -> dict:
    """The config's ``retention`` section less ``seeds``, which picks the runs the DAG measures
    (workflow/rules/retention.smk), not how each is measured: what a measurement depends on."""
    return {k: v for k, v in dict(section).items() if k != "seeds"}


# --- shared pieces ------------------------------------------------------------------------------------------
def _route(method, model: nn.Module, input_ids: torch.Tensor) -> None:
    """Route every token and example of the next forward pass as the general-text task (see the docstring)."""
    if method is None:
        return
    B, T = input_ids.shape
    method.before_forward(model, {
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
        "token_task": torch.full((B, T), GENERAL_TEXT_TASK, dtype=torch.long, device=input_ids.device),
        "example_task": torch.full((B,), GENERAL_TEXT_TASK, dtype=torch.long, device=input_ids.device)})


def _token_terms(logits: torch.Tensor, targets: torch.Tensor, text_vocab: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: (NLL over the text vocabulary, NLL over the whole vocabulary, item-token probability)."""
    logits = logits.float()
    if int(targets.max()) >= text_vocab:
        raise ValueError(f"a general-text target token id {int(targets.max())} lies in the item-token range "
                         f">= {text_vocab}: the text vocabulary size is wrong")
    target_logit = logits.gather(1, targets[:, None])[:, 0]
    lse_text = torch.logsumexp(logits[:, :text_vocab], dim=-1)
    nll_text = lse_text - target_logit
    if text_vocab >= logits.shape[1]:
        return nll_text, nll_text, torch.zeros_like(nll_text)
    lse_items = torch.logsumexp(logits[:, text_vocab:], dim=-1)
    lse_full = torch.logaddexp(lse_text, lse_items)
    return nll_text, lse_full - target_logit, torch.exp(lse_items - lse_full)


def _text_log_probs(logits: torch.Tensor, text_vocab: int) -> torch.Tensor:
    return torch.log_softmax(logits[..., :text_vocab].float(), dim=-1)


def _picked_log_probs(text_vocab: int):
    """``fn(logits, targets)`` for :func:`~gemsbench.modeling.head_map`: each position's log-probability (text
    vocabulary) of its target token."""
    return lambda logits, targets: _text_log_probs(logits, text_vocab).gather(1, targets[:, None])[:, 0]


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- perplexity ---------------------------------------------------------------------------------------------
@dataclass
class Perplexity:
    ppl: float
    nll: float  # token-weighted mean NLL (nats), text vocabulary
    tokens: int  # predicted tokens
    chunks: int
    ppl_full_vocab: float
    item_token_mass: float


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, texts: Sequence[str], max_tokens: int, text_vocab: int,
               is_encoder_decoder: bool = False, batch_size: int = 8, precision: str = "fp32",
               method=None) -> Perplexity:
    """Token-weighted perplexity of ``model`` on the lead ``max_tokens`` tokens of each text (module docstring)."""
    specials = SpecialTokens.of(tokenizer)
    chunks = [specials.text(chunk) for chunk in tokenize_chunks(tokenizer, texts, max_tokens)]
    if not chunks:
        raise ValueError("no text to measure perplexity on")
    device = _model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # an encoder-decoder reads the empty text as its encoder input: what its tokenizer makes of "" (T5: EOS)
    empty = specials.text([]) or [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad]
    sums = np.zeros(3)  # NLL text, NLL full, item mass
    tokens = 0
    for batch in batch_chunks(chunks, batch_size, pad):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if is_encoder_decoder:
            enc = torch.tensor([empty] * ids.shape[0], dtype=torch.long, device=device)
            start = model.config.decoder_start_token_id
            dec = torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)
            inputs = {"input_ids": enc, "attention_mask": torch.ones_like(enc), "decoder_input_ids": dec,
                      "decoder_attention_mask": mask}
            keep = mask.bool()
            targets = ids[keep]
        else:
            enc, inputs = ids, {"input_ids": ids, "attention_mask": mask}
            keep = torch.nn.functional.pad(mask[:, 1:], (0, 1)).bool()  # t predicts t+1 when t+1 is a real token
            targets = ids[:, 1:][keep[:, :-1]]
        _route(method, model, enc)
        with autocast(str(device), precision):
            h = sequence_hidden(model, inputs, is_encoder_decoder)[keep]
            if len(targets):
                terms = head_map(model, h, lambda logits, t: torch.stack(_token_terms(logits, t, text_vocab), 1),
                                 targets)
                sums += terms.double().sum(0).cpu().numpy()
        tokens += len(targets)
    if tokens == 0:
        raise ValueError(f"the texts give no token to predict with max_tokens={max_tokens}")
    nll, nll_full, mass = sums / tokens
    return Perplexity(ppl=math.exp(nll), nll=float(nll), tokens=tokens, chunks=len(chunks),
                      ppl_full_vocab=math.exp(nll_full), item_token_mass=float(mass))


# --- cloze probes -------------------------------------------------------------------------------------------
def section_candidates(probes: Sequence[Probe]) -> dict[str, list[str]]:
    """Section -> its distinct answers (sorted): the multiple-choice options of every probe of the section."""
    out: dict[str, set[str]] = {}
    for p in probes:
        out.setdefault(p.section, set()).add(p.d)
    return {section: sorted(answers) for section, answers in out.items()}


def select_probes(probes: Sequence[Probe], per_section: int, seed: int = PROBE_SEED) -> list[Probe]:
    """At most ``per_section`` probes of each section, drawn with a fixed seed, in file order."""
    chosen = []
    for section in dict.fromkeys(p.section for p in probes):
        members = [p for p in probes if p.section == section]
        if len(members) > per_section:
            keep = np.sort(np.random.default_rng(seed).choice(len(members), per_section, replace=False))
            members = [members[i] for i in keep]
        chosen.extend(members)
    return chosen


def cloze_prompt(p: Probe) -> str:
    return f"{p.a} is to {p.b} as {p.c} is to"


def cloze_correct(scores: Sequence[float], answer: int) -> bool:
    """The true answer scores strictly higher than every other candidate (a tie is wrong)."""
    return all(scores[answer] > s for j, s in enumerate(scores) if j != answer)


def _candidate_scores_decoder(model, prompt: list[int], cands: list[list[int]], text_vocab: int, pad: int,
                              device, precision: str, method) -> list[float]:
    body = decoder_body(model)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    _route(method, model, ids)
    with autocast(str(device), precision):
        out = body(input_ids=ids, use_cache=True)
        first = head_map(model, out.last_hidden_state[0, -1:], lambda logits: _text_log_probs(logits, text_vocab))[0]
    scores = [float(first[c[0]]) for c in cands]
    multi = [j for j, c in enumerate(cands) if len(c) > 1]
    if not multi:
        return scores
    # every candidate's tokens but its last, right-padded, reading the prompt from the (repeated) KV cache;
    # causal attention keeps the padding after a candidate's tokens out of their predictions
    width = max(len(cands[j]) - 1 for j in multi)
    tails = torch.full((len(multi), width), pad, dtype=torch.long, device=device)
    for row, j in enumerate(multi):
        tails[row, :len(cands[j]) - 1] = torch.tensor(cands[j][:-1])
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(multi))
    _route(method, model, tails)
    rows = torch.tensor([r for r, j in enumerate(multi) for _ in cands[j][1:]], device=device)
    cols = torch.tensor([t for j in multi for t in range(len(cands[j]) - 1)], device=device)
    targets = torch.tensor([tok for j in multi for tok in cands[j][1:]], device=device)
    with autocast(str(device), precision):
        hidden = body(input_ids=tails, past_key_values=cache, use_cache=True).last_hidden_state
        picked = head_map(model, hidden[rows, cols], _picked_log_probs(text_vocab), targets)
    picked = picked.double().cpu().tolist()
    for r, value in zip(rows.tolist(), picked):
        scores[multi[r]] += value
    return scores


def _candidate_scores_t5(model, prompt: list[int], cands: list[list[int]], text_vocab: int, pad: int, device,
                         precision: str, method) -> list[float]:
    width = max(len(c) for c in cands)
    dec = torch.full((len(cands), width), pad, dtype=torch.long, device=device)
    dec[:, 0] = model.config.decoder_start_token_id
    for row, c in enumerate(cands):
        dec[row, 1:len(c)] = torch.tensor(c[:-1])
    enc = torch.tensor([prompt], dtype=torch.long, device=device).expand(len(cands), -1).contiguous()
    rows = torch.tensor([row for row, c in enumerate(cands) for _ in c], device=device)
    cols = torch.tensor([t for c in cands for t in range(len(c))], device=device)
    targets = torch.tensor([tok for c in cands for tok in c], device=device)
    _route(method, model, enc)
    with autocast(str(device), precision):
        hidden = sequence_hidden(model, {"input_ids": enc, "attention_mask": torch.ones_like(enc),
                                         "decoder_input_ids": dec}, is_encoder_decoder=True)
        picked = head_map(model, hidden[rows, cols], _picked_log_probs(text_vocab), targets)
    scores = [0.0] * len(cands)
    for row, value in zip(rows.tolist(), picked.double().cpu().tolist()):
        scores[row] += value
    return scores


@torch.no_grad()
def candidate_log_probs(model: nn.Module, prompt: list[int], candidates: list[list[int]], text_vocab: int,
                        is_encoder_decoder: bool = False, pad: int = 0, precision: str = "fp32",
                        method=None) -> list[float]:
    """Summed log-probability (text vocabulary) of each candidate's token ids following the prompt's."""
    score = _candidate_scores_t5 if is_encoder_decoder else _candidate_scores_decoder
    return score(model, prompt, candidates, text_vocab, pad, _model_device(model), precision, method)


@dataclass
class ClozeSection:
    accuracy: float
    correct: int
    probes: int
    candidates: int


@torch.no_grad()
def cloze_accuracy(model: nn.Module, tokenizer, probes: Sequence[Probe], candidates: Mapping[str, Sequence[str]],
                   text_vocab: int, is_encoder_decoder: bool = False, precision: str = "fp32",
                   method=None) -> dict[str, ClozeSection]:
    """Per section, the share of ``probes`` whose answer wins the multiple choice among ``candidates[section]``
    (the rule of the module docstring)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    specials = SpecialTokens.of(tokenizer)
    encoded = {s: [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in cs]
               for s, cs in candidates.items()}
    for s, cands in encoded.items():
        empty = [candidates[s][j] for j, c in enumerate(cands) if not c]
        if empty:
            raise ValueError(f"cloze candidates {empty[:3]} of section {s!r} tokenise to nothing")
    tally: dict[str, list[int]] = {}
    for p in probes:
        if p.section not in candidates or p.d not in candidates[p.section]:
            raise ValueError(f"probe {p} has no candidate set holding its answer; build the sets with "
                             "section_candidates over (a superset of) the probes")
        prompt = specials.prompt(tokenizer(cloze_prompt(p), add_special_tokens=False)["input_ids"],
                                 is_encoder_decoder)
        scores = candidate_log_probs(model, prompt, encoded[p.section], text_vocab, is_encoder_decoder, pad,
                                     precision, method)
        ok = cloze_correct(scores, list(candidates[p.section]).index(p.d))
        counts = tally.setdefault(p.section, [0, 0])
        counts[0] += int(ok)
        counts[1] += 1
    return {s: ClozeSection(correct / n, correct, n, len(candidates[s])) for s, (correct, n) in tally.items()}


# --- both ---------------------------------------------------------------------------------------------------
def retention_metrics(model: nn.Module, tokenizer, text_vocab: int, settings: RetentionSettings,
                      is_encoder_decoder: bool = False, precision: str = "fp32", method=None) -> dict:
    """Perplexity on the drift articles and cloze accuracy on the factual probes (module docstring), with the
    counts and settings behind them. Puts ``model`` in eval mode."""
    model.eval()
    texts = [a.text for a in corpus_articles(CORPUS, "drift", settings.articles)]
    every = load_probes()
    t0 = time.perf_counter()
    ppl = perplexity(model, tokenizer, texts, settings.max_tokens, text_vocab, is_encoder_decoder,
                     settings.batch_size, precision, method)
    t1 = time.perf_counter()
    probes = select_probes(every, settings.probes_per_section)
    sections = cloze_accuracy(model, tokenizer, probes, section_candidates(every), text_vocab, is_encoder_decoder,
                              precision, method)
    t2 = time.perf_counter()
    n_probes = sum(s.probes for s in sections.values())
    correct = sum(s.correct for s in sections.values())
    log.info("perplexity %.3f over %d tokens (%.1f s); cloze accuracy %.3f over %d probes (%.1f s)", ppl.ppl,
             ppl.tokens, t1 - t0, correct / n_probes, n_probes, t2 - t1)
    return {"corpus": CORPUS, "ppl": ppl.ppl, "nll": ppl.nll, "tokens": ppl.tokens, "chunks": ppl.chunks,
            "ppl_full_vocab": ppl.ppl_full_vocab, "item_token_mass": ppl.item_token_mass,
            "cloze_accuracy": correct / n_probes, "probes": n_probes,
            "cloze": {s: asdict(v) for s, v in sections.items()},
            "text_vocab": int(text_vocab), "precision": precision, "settings": asdict(settings),
            "ppl_seconds": round(t1 - t0, 2), "cloze_seconds": round(t2 - t1, 2)}
