"""The general-domain corpus (gensim's Wikipedia excerpt) and the factual probes."""
import builtins

import pytest
import torch

from gemsbench import corpus
from gemsbench.backbone import char_tokenizer
from gemsbench.corpus import (DRIFT_ARTICLES, PROBE_SECTIONS, batch_chunks, clean_wiki_text, corpus_articles,
                              load_articles, load_probes, split_articles, tokenize_chunks)


def test_articles_are_clean_prose_without_redirects():
    articles = load_articles()
    assert len(articles) == 106  # 206 pages in the excerpt, 100 of them redirects
    assert len({a.title for a in articles}) == len(articles)
    for a in articles:
        assert len(a.text) > 200, a.title
        assert not a.text.lower().startswith("#redirect")
        assert "'''" not in a.text and "\n\n\n" not in a.text and "==" not in a.text, a.title


def test_markup_left_by_filter_wiki_is_cleaned():
    raw = "'''Autism''' is a ''disorder'' ( ).\n\n\n\n==Characteristics==\nIt  varies (, ) widely."
    assert clean_wiki_text(raw) == "Autism is a disorder.\n\nCharacteristics\n\nIt varies widely."


def test_split_is_disjoint_complete_and_independent_of_order():
    articles = load_articles()
    split = split_articles(articles)
    null_titles = {a.title for a in split["nullspace"]}
    drift_titles = {a.title for a in split["drift"]}
    assert len(drift_titles) == DRIFT_ARTICLES and not null_titles & drift_titles
    assert null_titles | drift_titles == {a.title for a in articles}
    assert split_articles(list(reversed(articles))) == split
    # a smaller knowledge space is a prefix of a larger one and never reaches a drift article
    assert corpus_articles("enwiki_gensim", "nullspace", 5) == split["nullspace"][:5]


def test_bad_requests_name_the_limits():
    with pytest.raises(ValueError, match="1..80"):
        corpus_articles("enwiki_gensim", "nullspace", 81)
    with pytest.raises(ValueError, match="unknown general-domain corpus"):
        corpus_articles("c4", "nullspace", 3)


def test_chunks_respect_the_token_budget():
    tok = char_tokenizer()
    texts = ["abcdefghij", "xyz"]
    assert tokenize_chunks(tok, texts, 4) == [tok("abcd")["input_ids"], tok("xyz")["input_ids"]]
    every = tokenize_chunks(tok, texts, 4, chunks_per_text=None)
    assert [len(c) for c in every] == [4, 4, 2, 3]
    real = tokenize_chunks(tok, [a.text for a in corpus_articles("enwiki_gensim", "drift", 3)], 64)
    assert len(real) == 3 and all(len(c) == 64 for c in real)


def test_batches_pad_on_the_right_with_a_mask():
    batches = list(batch_chunks([[5, 6, 7], [8], [9, 9]], batch_size=2, pad_id=1))
    assert len(batches) == 2
    assert batches[0]["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batches[1]["input_ids"].dtype == torch.long and batches[1]["attention_mask"].sum() == 2


def test_probes_parse_the_factual_sections():
    probes = load_probes()
    sections = {p.section for p in probes}
    assert sections == set(PROBE_SECTIONS)
    assert probes[0].section == "capital-common-countries"
    assert (probes[0].a, probes[0].b, probes[0].c, probes[0].d) == ("Athens", "Greece", "Baghdad", "Iraq")
    assert sum(p.section == "currency" for p in probes) == 866
    assert all(p.a and p.b and p.c and p.d for p in probes)
    with pytest.raises(ValueError, match="not in questions-words.txt"):
        load_probes(["capital-mars"])


def test_missing_gensim_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_gensim(name, *args, **kwargs):
        if name.startswith("gensim"):
            raise ImportError("No module named 'gensim'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gensim)
    with pytest.raises(corpus.CorpusMissing, match="pip install gensim==4.4.0"):
        load_probes()
