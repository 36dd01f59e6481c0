"""Knowledge retention: perplexity and cloze rules by hand, the cached scoring against brute force, the CLI on a
trained tiny run and on the base backbone, and the retention table's changes by hand."""
import argparse
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from gemsbench.backbone import add_item_tokens, char_tokenizer, load_backbone
from gemsbench.cli import retention as retention_cli
from gemsbench.config import ConfigError, Run, load_config
from gemsbench.corpus import PROBE_SECTIONS, Probe, corpus_articles
from gemsbench.retention import (RetentionSettings, candidate_log_probs, cloze_accuracy, cloze_correct, perplexity,
                                 section_candidates, select_probes)
from gemsbench.train import TrainingError

TOK = char_tokenizer()
V = len(TOK)


def tid(ch: str) -> int:
    return TOK.convert_tokens_to_ids(ch)


def bigram_llama(table: torch.Tensor) -> LlamaForCausalLM:
    """A real one-layer Llama that is a bigram model: its block adds nothing (zero output projections), the
    embedding is the identity and the final norm undoes the RMS scaling, so the logits after token i are
    ``table[i]``."""
    cfg = LlamaConfig(vocab_size=V, hidden_size=V, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, tie_word_embeddings=False, pad_token_id=1, eos_token_id=2,
                      bos_token_id=2, rms_norm_eps=1e-6)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(V))
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(math.sqrt(1 / V + 1e-6))
        model.lm_head.weight.copy_(table.T)
    return model


# --- perplexity ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_is_exp_of_the_token_mean_nll_by_hand(batch_size):
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(0)) * 2
    model = bigram_llama(table)
    text_vocab = V - 10  # pretend the last 10 ids are item tokens: they leave the normaliser
    # "abcab" keeps its lead 4 tokens "abca"; "ba" is shorter than max_tokens (padding in a batch of 2)
    got = perplexity(model, TOK, ["abcab", "ba"], 4, text_vocab, batch_size=batch_size)
    pairs = [("a", "b"), ("b", "c"), ("c", "a"), ("b", "a")]
    nll = [-torch.log_softmax(table[tid(x), :text_vocab], -1)[tid(y)] for x, y in pairs]
    nll_full = [-torch.log_softmax(table[tid(x)], -1)[tid(y)] for x, y in pairs]
    mass = [torch.softmax(table[tid(x)], -1)[text_vocab:].sum() for x, _ in pairs]
    assert got.tokens == 4 and got.chunks == 2
    assert got.ppl == pytest.approx(math.exp(float(sum(nll)) / 4), rel=1e-5)
    assert got.nll == pytest.approx(float(sum(nll)) / 4, rel=1e-5)
    assert got.ppl_full_vocab == pytest.approx(math.exp(float(sum(nll_full)) / 4), rel=1e-5)
    assert got.item_token_mass == pytest.approx(float(sum(mass)) / 4, rel=1e-4)


def test_batched_perplexity_matches_unpadded_forwards_and_item_tokens_change_nothing():
    bb = load_backbone({"source": "tiny_llama"})
    model = bb.model.eval()
    texts = ["The cat sat on the mat.", "Paris is the capital of France.", "Go."]
    before = perplexity(model, bb.tokenizer, texts, 16, len(bb.tokenizer), batch_size=2)
    total, n = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor(bb.tokenizer(text, add_special_tokens=False)["input_ids"][:16])
            logits = model(input_ids=ids[None]).logits[0]
            total += float(F.cross_entropy(logits[:-1], ids[1:], reduction="sum"))
            n += len(ids) - 1
    assert before.tokens == n
    assert before.ppl == pytest.approx(math.exp(total / n), rel=1e-5)
    add_item_tokens(bb, ["red thing", "blue thing", ""], "title_mean")
    after = perplexity(bb.model.eval(), bb.tokenizer, texts, 16, bb.item_token_ids[0], batch_size=2)
    assert after.ppl == pytest.approx(before.ppl, rel=1e-6)  # the text-vocabulary rule: item tokens are inert
    assert after.ppl_full_vocab > after.ppl and 0 < after.item_token_mass < 1
    bf16 = perplexity(bb.model, bb.tokenizer, texts, 16, bb.item_token_ids[0], batch_size=2, precision="bf16")
    assert bf16.ppl == pytest.approx(before.ppl, rel=0.05)


def test_perplexity_and_cloze_with_the_head_in_slices_of_two_positions(monkeypatch):
    """The output head's logit budget (gemsbench.modeling.HEAD_LOGITS) changes how many positions one head call
    takes, not what is measured."""
    from gemsbench import modeling

    bb = load_backbone({"source": "tiny_llama"})
    model = bb.model.eval()
    texts = ["The cat sat on the mat.", "Go."]
    prompt = TOK("a is to b as c is to", add_special_tokens=False)["input_ids"]
    cands = [TOK(c, add_special_tokens=False)["input_ids"] for c in (" Xa", " Y", " Zbc")]
    whole = perplexity(model, TOK, texts, 16, V), candidate_log_probs(model, prompt, cands, V, pad=TOK.pad_token_id)
    monkeypatch.setattr(modeling, "HEAD_LOGITS", 2 * V)
    sliced = perplexity(model, TOK, texts, 16, V), candidate_log_probs(model, prompt, cands, V, pad=TOK.pad_token_id)
    assert sliced[0].nll == pytest.approx(whole[0].nll, rel=1e-6) and sliced[0].tokens == whole[0].tokens
    assert sliced[1] == pytest.approx(whole[1], rel=1e-6)


# --- cloze --------------------------------------------------------------------------------------------------
def test_cloze_rule_on_a_bigram_model_with_known_answers():
    table = torch.zeros(V, V)
    table[tid(" "), tid("X")] = 8.0  # after a space, "X" is likely; everything else is uniform
    model = bigram_llama(table)
    probes = [Probe("s1", "a", "b", "c", "Xa"), Probe("s1", "d", "e", "f", "Yb"), Probe("s1", "g", "h", "i", "Zc"),
              Probe("s2", "a", "b", "c", "Qa"), Probe("s2", "d", "e", "f", "Qb")]
    candidates = section_candidates(probes)
    assert candidates == {"s1": ["Xa", "Yb", "Zc"], "s2": ["Qa", "Qb"]}
    got = cloze_accuracy(model, TOK, probes, candidates, V)
    assert (got["s1"].correct, got["s1"].probes, got["s1"].candidates) == (1, 3, 3)  # only "Xa" wins
    assert got["s1"].accuracy == pytest.approx(1 / 3)
    assert (got["s2"].correct, got["s2"].probes) == (0, 2)  # "Qa" and "Qb" tie: a tie is wrong
    # the score of " Xa" after "... is to": log p(" " | "o") + log p("X" | " ") + log p("a" | "X")
    prompt = TOK("a is to b as c is to", add_special_tokens=False)["input_ids"]
    cand = TOK(" Xa", add_special_tokens=False)["input_ids"]
    want = -math.log(V) + (8 - math.log(V - 1 + math.exp(8))) - math.log(V)
    assert candidate_log_probs(model, prompt, [cand], V)[0] == pytest.approx(want, rel=1e-5)


def test_cloze_correct_needs_a_strict_win():
    assert cloze_correct([2.0, 1.0, -3.0], 0)
    assert not cloze_correct([1.0, 1.0, 0.0], 0)
    assert not cloze_correct([0.0, 1.0], 0)


@pytest.mark.parametrize("source", ["tiny_llama", "tiny_t5"])
def test_cached_candidate_scores_match_full_forward_passes(source):
    bb = load_backbone({"source": source})
    model, tok = bb.model.eval(), bb.tokenizer
    prompt = tok("Athens is to Greece as Rome is to", add_special_tokens=False)["input_ids"]
    cands = [tok(c, add_special_tokens=False)["input_ids"] for c in (" Italy", " X", " Spain and")]
    got = candidate_log_probs(model, prompt, cands, len(tok), bb.is_encoder_decoder, tok.pad_token_id)
    with torch.no_grad():
        for score, c in zip(got, cands):
            if bb.is_encoder_decoder:
                dec = torch.tensor([[model.config.decoder_start_token_id] + c[:-1]])
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt]), decoder_input_ids=dec).logits[0], -1)
                want = sum(float(logp[t, x]) for t, x in enumerate(c))
            else:
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + c])).logits[0], -1)
                want = sum(float(logp[len(prompt) - 1 + t, x]) for t, x in enumerate(c))
            assert score == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_probe_subset_is_fixed_and_capped_per_section():
    probes = [Probe(s, str(i), "b", "c", f"d{i % 5}") for s in ("s1", "s2") for i in range(30)] + \
             [Probe("s3", "a", "b", "c", "d")]
    chosen = select_probes(probes, 4)
    assert [sum(p.section == s for p in chosen) for s in ("s1", "s2", "s3")] == [4, 4, 1]
    assert chosen == select_probes(probes, 4)
    with pytest.raises(ValueError, match="drift split holds 26"):
        RetentionSettings(articles=27)


# --- the CLI on a trained tiny run and on the base backbone ------------------------------------------------
def tiny_config(tmp_path) -> str:
    cfg = {"results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
           "seeds": [1], "datasets": {"syn": {"loader": "movielens"}},
           "backbones": {"tiny": {"source": "tiny_llama", "hidden": 32, "layers": 2}},
           "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "val_examples": 4, "precision": "fp32"},
           "retention": {"articles": 2, "max_tokens": 24, "probes_per_section": 2},
           "methods": {"lora": {"method": "lora", "hparams": {"rank": 4, "alpha": 8}},
                       "moe_lora": {"method": "moe_lora", "hparams": {"experts": 2, "expert_rank": 2}},
                       "full_ft": {"method": "full_ft"}, "popularity": {"method": "popularity"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def cli_args(config, data, **kw):
    base = dict(config=config, dataset="syn", backbone="tiny", data=str(data), base=False, run=None, seed=None,
                run_dir=None, out=None, verbose=False)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("run", ["lora", "moe_lora"])  # moe_lora: task routing through the cached passes
def test_retention_json_of_a_trained_run_and_of_the_base(run, synthetic_dataset, tmp_path):
    from gemsbench.cli.common import build_run

    config_path = tiny_config(tmp_path)
    config = load_config(config_path)
    run_dir = tmp_path / "runs" / run
    method, ctx = build_run(config, Run("syn", "tiny", run, 1), str(synthetic_dataset.root), str(run_dir))
    method.fit(ctx)

    retention_cli.run(cli_args(config_path, synthetic_dataset.root, run=run, seed=1, run_dir=str(run_dir)))
    got = json.loads((run_dir / "retention.json").read_text())
    assert (got["kind"], got["run"], got["method"], got["dataset"], got["backbone"], got["seed"]) == \
        ("run", run, run, "syn", "tiny", 1)
    assert got["tokens"] == 2 * 23 and got["chunks"] == 2  # 2 articles x (24 characters - 1 context token)
    assert got["probes"] == 2 * len(PROBE_SECTIONS) and set(got["cloze"]) == set(PROBE_SECTIONS)
    assert math.isfinite(got["ppl"]) and got["ppl"] > 1 and 0 <= got["cloze_accuracy"] <= 1
    assert got["text_vocab"] == V  # the char tokenizer's own ids; the item tokens follow them
    assert got["seconds"] >= 0 and got["settings"]["max_tokens"] == 24

    base_out = tmp_path / "base.json"
    retention_cli.run(cli_args(config_path, synthetic_dataset.root, base=True, out=str(base_out)))
    base = json.loads(base_out.read_text())
    assert (base["kind"], base["run"], base["seed"]) == ("base", None, 1)
    # the base with item tokens scores general text as the plain pre-trained backbone does
    plain = load_backbone(config["backbones"]["tiny"])
    texts = [a.text for a in corpus_articles("enwiki_gensim", "drift", 2)]
    assert base["ppl"] == pytest.approx(perplexity(plain.model.eval(), plain.tokenizer, texts, 24, V).ppl, rel=1e-6)
    assert base["item_token_mass"] > 0 and base["tokens"] == got["tokens"]


def test_untrained_and_non_llm_runs_are_clear_errors(synthetic_dataset, tmp_path):
    config_path = tiny_config(tmp_path)
    with pytest.raises(TrainingError, match="run the train step"):
        retention_cli.run(cli_args(config_path, synthetic_dataset.root, run="full_ft", seed=1,
                                   run_dir=str(tmp_path / "untrained")))
    with pytest.raises(ConfigError, match="LLM runs only"):
        retention_cli.run(cli_args(config_path, synthetic_dataset.root, run="popularity", seed=1,
                                   run_dir=str(tmp_path / "pop")))
    with pytest.raises(ConfigError, match="--base needs --out"):
        retention_cli.run(cli_args(config_path, synthetic_dataset.root, base=True))


# --- the retention table and figure ------------------------------------------------------------------------
def write_retention(path, kind, ppl, cloze, run=None, seed=None):
    path.write_text(json.dumps({"kind": kind, "run": run, "method": run, "dataset": "syn", "backbone": "tiny",
                                "seed": seed, "ppl": ppl, "cloze_accuracy": cloze, "tokens": 100, "probes": 8,
                                "settings": {"articles": 2, "max_tokens": 51}}))
    return path


def test_retention_table_changes_by_hand(tmp_path):
    from gemsbench.analysis.registry import TABLES
    from gemsbench.cli.figures import build_parser, run as draw

    paths = [write_retention(tmp_path / "base.json", "base", 10.0, 0.5),
             write_retention(tmp_path / "a1.json", "run", 11.0, 0.375, "full_ft", 1),
             write_retention(tmp_path / "a2.json", "run", 12.0, 0.5, "full_ft", 2),
             write_retention(tmp_path / "b1.json", "run", 9.0, 0.625, "gems", 1)]
    out = tmp_path / "tables"
    out.mkdir()
    config = {"methods": {"full_ft": {"method": "full_ft", "label": "Full FT"},
                          "gems": {"method": "gems", "label": "GEMS"}}}
    TABLES["retention"].make(config, {"retention": paths}, out)
    table = pd.read_csv(out / "retention.csv").set_index("run")
    a, b = table.loc["full_ft"], table.loc["gems"]
    assert (a["seeds"], b["seeds"]) == (2, 1) and a["label"] == "Full FT"
    assert a["ppl_base"] == 10.0 and a["cloze_base"] == 0.5
    assert a["ppl_mean"] == pytest.approx(11.5) and a["ppl_std"] == pytest.approx(math.sqrt(0.5))
    assert a["ppl_rel_change_mean"] == pytest.approx(0.15)  # (11/10 - 1 + 12/10 - 1) / 2
    assert a["ppl_rel_change_std"] == pytest.approx(math.sqrt(0.005))  # sample std of 0.1 and 0.2
    assert a["cloze_change_mean"] == pytest.approx(-0.0625)  # (-0.125 + 0) / 2
    assert b["ppl_rel_change_mean"] == pytest.approx(-0.1) and b["ppl_rel_change_std"] == 0.0
    assert b["cloze_change_mean"] == pytest.approx(0.125)
    md = (out / "retention.md").read_text()
    assert "Knowledge retention · syn · tiny" in md
    assert "| Full FT | 10.00 | 11.50 ± 0.71 | +15.0 ± 7.1 | 50.0 | 43.8 ± 8.8 | -6.2 ± 8.8 |" in md
    assert "| GEMS | 10.00 | 9.00 | -10.0 | 50.0 | 62.5 | +12.5 |" in md
    assert r"$\Delta$PPL (\%)" in (out / "retention.tex").read_text()

    written = draw(build_parser().parse_args(["--out-dir", str(tmp_path / "fig"), "--retention",
                                              str(out / "retention.csv")]))
    assert sorted(p.name for p in written) == ["retention_syn_tiny.pdf", "retention_syn_tiny.png"]

    with pytest.raises(ValueError, match="retention_base"):
        TABLES["retention"].make({"methods": {}}, {"retention": paths[1:]}, out)
