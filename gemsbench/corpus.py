"""The general-domain corpus of the embedded default, and factual cloze probes (protocol.md).

Both ship inside the PyPI package ``gensim`` (test data, no download):

* ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` — an English Wikipedia excerpt
  (CC BY-SA). :func:`load_articles` reads it with gensim's ``extract_pages`` + ``filter_wiki``, drops redirect
  and empty pages, and cleans the wiki markup those leave behind (bold/italic quotes, ``==headings==``,
  runs of blank lines).
* ``questions-words.txt`` — analogy questions; the factual sections (capitals, currencies, US cities' states)
  become cloze probes "a is to b as c is to d" (:func:`load_probes`).

The articles are split once, deterministically and for good, into two disjoint sets: ``nullspace`` (the pool
whose features define the knowledge space of the null-space projection) and ``drift`` (held out, to measure
how far fine-tuning moves the model on general text). The split orders articles by the SHA-256 of their title
— independent of file order, RNG and library versions — puts the first :data:`DRIFT_ARTICLES` in ``drift``
and the rest in ``nullspace``; a knowledge space of n articles uses the first n of the ``nullspace`` order, so
it never touches a drift article whatever n is.
"""
from __future__ import annotations

import bz2
import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
QUESTIONS_FILE = "questions-words.txt"
#: corpus names accepted by the knowledge space (one today; the name is part of every cache key)
CORPORA = ("enwiki_gensim",)
SPLITS = ("nullspace", "drift")
DRIFT_ARTICLES = 26  # about a quarter of the 106 usable articles; the other 80 form the null-space pool
PROBE_SECTIONS = ("capital-common-countries", "capital-world", "currency", "city-in-state")
GENSIM_INSTALL = "pip install gensim==4.4.0"


class CorpusMissing(FileNotFoundError):
    """gensim or one of its data files is missing; the message names the package and the install command."""


@dataclass(frozen=True)
class Article:
    title: str
    text: str


@dataclass(frozen=True)
class Probe:
    """A factual analogy from questions-words.txt: ``a`` is to ``b`` as ``c`` is to ``d`` (the answer)."""

    section: str
    a: str
    b: str
    c: str
    d: str


def _gensim_file(name: str) -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError as e:
        raise CorpusMissing(f"the general-domain corpus ships with the PyPI package `gensim`, which is not "
                          f"installed; install it with `{GENSIM_INSTALL}`") from e
    path = Path(datapath(name))
    if not path.exists():
        raise CorpusMissing(f"gensim's test data lacks {name} (looked at {path}); reinstall with "
                          f"`{GENSIM_INSTALL} --force-reinstall`")
    return path


_EMPHASIS = re.compile(r"'{2,}")
_HEADING = re.compile(r"^\s*(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACES = re.compile(r"[ \t]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([.,;:])")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_wiki_text(text: str) -> str:
    """Plain prose from ``filter_wiki`` output: headings become paragraphs of their own, emphasis quotes and
    the empty parentheses left by removed templates go, whitespace is normalised (paragraphs stay separated)."""
    text = _HEADING.sub(lambda m: f"\n{m.group(2)}\n", text)
    text = _EMPHASIS.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    lines = [_SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", line)).strip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


@functools.lru_cache(maxsize=1)
def load_articles() -> tuple[Article, ...]:
    """Every usable article of the excerpt, in file order (redirects and pages empty after cleaning dropped).
    Parsed once per process (``filter_wiki`` over the excerpt takes seconds)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(_gensim_file(WIKI_FILE), "rb") as f:
        for title, raw, _page_id in extract_pages(f):
            if raw.lstrip().lower().startswith("#redirect"):
                continue
            text = clean_wiki_text(filter_wiki(raw))
            if text:
                articles.append(Article(title, text))
    if len(articles) <= DRIFT_ARTICLES:
        raise CorpusMissing(f"{WIKI_FILE} gave only {len(articles)} usable articles, too few for a drift split of "
                          f"{DRIFT_ARTICLES}; reinstall gensim (`{GENSIM_INSTALL}`)")
    return tuple(articles)


def _split_order(articles: Sequence[Article]) -> list[Article]:
    return sorted(articles, key=lambda a: hashlib.sha256(a.title.encode()).hexdigest())


def split_articles(articles: Sequence[Article]) -> dict[str, list[Article]]:
    """The fixed disjoint split {"nullspace": [...], "drift": [...]} (see the module docstring)."""
    ordered = _split_order(articles)
    return {"drift": ordered[:DRIFT_ARTICLES], "nullspace": ordered[DRIFT_ARTICLES:]}


def corpus_articles(corpus: str, split: str, n: int | None = None) -> list[Article]:
    """The first ``n`` (all when None) articles of one split of a named corpus."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown general-domain corpus {corpus!r}; known: {CORPORA}")
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; use one of {SPLITS}")
    chosen = split_articles(load_articles())[split]
    if n is not None:
        if not 1 <= n <= len(chosen):
            raise ValueError(f"asked for {n} {split} articles of {corpus!r}, which has {len(chosen)}; "
                              f"choose 1..{len(chosen)}")
        chosen = chosen[:n]
    return chosen


def tokenize_chunks(tokenizer, texts: Sequence[str], max_tokens: int,
                    chunks_per_text: int | None = 1) -> list[list[int]]:
    """Token-id chunks of at most ``max_tokens`` (the text's own tokens, without special tokens: the caller frames
    each chunk for its backbone, :mod:`gemsbench.specials`): each text is cut into consecutive chunks, of which
    the first ``chunks_per_text`` are kept (None keeps all). One chunk per article — its
    lead section — is what the release's "≤512 tokens per article" amounts to."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    if chunks_per_text is not None and chunks_per_text < 1:
        raise ValueError(f"chunks_per_text={chunks_per_text} must be >= 1 or None")
    chunks = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)]
        chunks.extend(pieces if chunks_per_text is None else pieces[:chunks_per_text])
    return chunks


def batch_chunks(chunks: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches ``{"input_ids", "attention_mask"}`` (mask 0 on padding), in the given order."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    for start in range(0, len(chunks), batch_size):
        part = chunks[start:start + batch_size]
        width = max(len(c) for c in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for row, chunk in enumerate(part):
            ids[row, :len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            mask[row, :len(chunk)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def load_probes(sections: Sequence[str] = PROBE_SECTIONS) -> list[Probe]:
    """The analogy questions of the named sections of questions-words.txt, in file order."""
    wanted, found, probes = set(sections), set(), []
    current = None
    for number, line in enumerate(_gensim_file(QUESTIONS_FILE).read_text().splitlines(), start=1):
        if line.startswith(":"):
            current = line[1:].strip()
            found.add(current)
            continue
        if current not in wanted or not line.strip():
            continue
        words = line.split()
        if len(words) != 4:
            raise CorpusMissing(f"{QUESTIONS_FILE} line {number} in section {current!r} has {len(words)} words, "
                              "not 4; reinstall gensim")
        probes.append(Probe(current, *words))
    missing = wanted - found
    if missing:
        raise ValueError(f"sections {sorted(missing)} are not in {QUESTIONS_FILE}; present: {sorted(found)}")
    return probes
