"""Every backbone family reads its inputs as its own tokenizer frames a text (gemsbench/specials.py), on tiny
models built from configs and saved as Hugging Face directories (nothing is downloaded):

* a decoder whose tokenizer puts a beginning-of-text token in front (Gemma-3 architecture, as Gemma and Llama-3),
* a decoder whose tokenizer adds nothing (Llama architecture, as SmolLM2; Qwen2.5's tokenizer adds nothing too),
* T5, whose tokenizer closes every text with its end-of-sequence token;

and a tiny GGUF file (tests/tiny_gguf.py) trains a method from a config alone."""
import argparse
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from tokenizers import processors
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, T5Config

from gemsbench.backbone import add_item_tokens, char_tokenizer, gguf_cache_dir, load_backbone, tiny_model
from gemsbench.formats import Encoder, FormatConfig
from gemsbench.knowledge import KnowledgeSpace, knowledge_batches
from gemsbench.retention import candidate_log_probs, perplexity
from gemsbench.specials import SpecialTokens
from tiny_gguf import write_tiny_gguf

FAMILIES = ("bos_decoder", "plain_decoder", "t5")
TEXTS = ["Paris is the capital of France.", "The cat sat on the mat, and then it slept."]


def family_tokenizer(family: str):
    """The character-level test tokenizer, with the post-processor of the family: BOS in front, EOS behind or none."""
    tok = char_tokenizer()
    if family == "bos_decoder":
        tok.add_special_tokens({"bos_token": "<bos>"})
        bos = tok.convert_tokens_to_ids("<bos>")
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)])
    elif family == "t5":
        eos = tok.eos_token_id
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return tok


def family_model(family: str, vocab: int):
    torch.manual_seed(0)
    shape = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, pad_token_id=1, eos_token_id=2)
    if family == "bos_decoder":
        return Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=8, sliding_window=512, bos_token_id=vocab - 1))
    if family == "plain_decoder":
        return LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    model = tiny_model("tiny_t5", vocab)
    assert isinstance(model.config, T5Config)
    return model


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """family -> a saved model directory, loaded by the suite as ``source: hf``."""
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for family in FAMILIES:
        tok = family_tokenizer(family)
        model = family_model(family, len(tok))
        dirs[family] = root / family
        model.save_pretrained(dirs[family])
        tok.save_pretrained(dirs[family])
    return dirs


def load(family_dirs, family):
    bb = load_backbone({"source": "hf", "name_or_path": str(family_dirs[family])})
    bb.model.eval()
    return bb


def test_special_tokens_are_what_the_tokenizer_adds(family_dirs):
    got = {family: SpecialTokens.of(load(family_dirs, family).tokenizer) for family in FAMILIES}
    bos = family_tokenizer("bos_decoder").convert_tokens_to_ids("<bos>")
    assert got["bos_decoder"] == SpecialTokens(prefix=(bos,))
    assert got["plain_decoder"] == SpecialTokens()
    assert got["t5"] == SpecialTokens(suffix=(char_tokenizer().eos_token_id,))


@pytest.mark.parametrize("family", FAMILIES)
def test_perplexity_equals_the_plain_model_on_the_tokenizers_own_encoding(family, family_dirs):
    """The suite's perplexity of whole texts (padded into one batch) = exp of the token-mean NLL of
    ``model(**tokenizer(text))``: for a decoder, every token after the first predicted from those before it; for
    T5, the text's encoding as labels behind the empty text's encoding as encoder input."""
    bb = load(family_dirs, family)
    tok, model = bb.tokenizer, bb.model
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            enc = tok(text, return_tensors="pt")
            if bb.is_encoder_decoder:
                out = model(**tok("", return_tensors="pt"), labels=enc["input_ids"])
                n = enc["input_ids"].shape[1]
                nll, count = nll + float(out.loss) * n, count + n
            else:
                logits = model(**enc).logits[0, :-1]
                nll += float(F.cross_entropy(logits, enc["input_ids"][0, 1:], reduction="sum"))
                count += enc["input_ids"].shape[1] - 1
    got = perplexity(model, tok, TEXTS, max_tokens=64, text_vocab=len(tok), is_encoder_decoder=bb.is_encoder_decoder,
                     batch_size=2)
    assert got.tokens == count
    assert got.nll == pytest.approx(nll / count, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cloze_scores_read_the_prompt_as_the_tokenizer_encodes_it(family, family_dirs):
    bb = load(family_dirs, family)
    tok, model = bb.tokenizer, bb.model
    prompt, answer = "Athens is to Greece as Rome is to", " Italy"
    bare = tok(prompt, add_special_tokens=False)["input_ids"]
    cand = tok(answer, add_special_tokens=False)["input_ids"]
    framed = SpecialTokens.of(tok).prompt(bare, bb.is_encoder_decoder)
    got = candidate_log_probs(model, framed, [cand], len(tok), bb.is_encoder_decoder, pad=tok.pad_token_id)[0]
    with torch.no_grad():
        if bb.is_encoder_decoder:
            assert framed == tok(prompt)["input_ids"]  # T5: the prompt closed by EOS
            want = -float(model(**tok(prompt, return_tensors="pt"), labels=torch.tensor([cand])).loss) * len(cand)
        else:
            full = tok(prompt)["input_ids"]
            assert framed == full
            logp = torch.log_softmax(model(input_ids=torch.tensor([full + cand])).logits[0], -1)
            want = sum(float(logp[len(full) - 1 + j, t]) for j, t in enumerate(cand))
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["prompt", "timeline"])
def test_training_and_evaluation_sequences_carry_the_family_tokens(family, name, family_dirs, synthetic_dataset):
    """A prompt or timeline starts with the decoder's BOS where it has one, a T5 encoder input ends with EOS, and
    every label still points at the position before its item token."""
    if family == "t5" and name == "timeline":
        pytest.skip("the timeline format is for decoder-only backbones")
    bb = load(family_dirs, family)
    ids = add_item_tokens(bb, synthetic_dataset.items["title"].tolist())
    enc = Encoder(bb.tokenizer, ids, bb.is_encoder_decoder, FormatConfig(name=name, max_history=6),
                  getattr(bb.model.config, "decoder_start_token_id", None))
    bare = Encoder(char_tokenizer(), ids, bb.is_encoder_decoder, FormatConfig(name=name, max_history=6))
    specials = SpecialTokens.of(bb.tokenizer)
    units = enc.training_units(synthetic_dataset.splits["train"], synthetic_dataset.events)[:6]
    seqs = [enc.train_sequence(u) for u in units]
    seqs += [enc.eval_sequence(r) for r in synthetic_dataset.splits["test"].head(4).itertuples(index=False)]
    plain = [bare.train_sequence(u) for u in units]
    plain += [bare.eval_sequence(r) for r in synthetic_dataset.splits["test"].head(4).itertuples(index=False)]
    shift = len(specials.prefix)
    for seq, ref in zip(seqs, plain):
        assert seq.ids == specials.prompt(ref.ids, bb.is_encoder_decoder)
        assert len(seq.token_task) == len(seq.ids)
        if bb.is_encoder_decoder:  # read at decoder position 0, whatever the encoder input's length
            assert [(item, task) for _, item, task in seq.labels] == [(item, task) for _, item, task in ref.labels]
        else:
            assert [(p - shift, item, task) for p, item, task in seq.labels] == ref.labels
    if family == "bos_decoder":
        assert all(s.ids[0] == bb.tokenizer.convert_tokens_to_ids("<bos>") for s in seqs)
    if family == "t5":
        assert all(s.ids[-1] == bb.tokenizer.eos_token_id for s in seqs)
        batch = enc.collate(seqs)
        assert batch["label_pos"][:, 1].eq(0).all() and batch["decoder_input_ids"].eq(enc.decoder_start).all()
    if name == "timeline":  # the hidden state at a label's position is followed by the label's item token
        seq = seqs[0]
        assert all(seq.ids[p + 1] == ids[item] for p, item, _ in seq.labels)


@pytest.mark.parametrize("family", FAMILIES)
def test_knowledge_space_text_is_framed_as_the_tokenizer_frames_it(family, family_dirs):
    bb = load(family_dirs, family)
    batches = knowledge_batches(bb.tokenizer, KnowledgeSpace(articles=2, max_tokens=24), 2, bb.is_encoder_decoder)
    ids, mask = batches[0]["input_ids"], batches[0]["attention_mask"]
    specials = SpecialTokens.of(bb.tokenizer)
    assert int(mask.sum(1).max()) == 24 + len(specials.prefix) + len(specials.suffix)
    for row, n in zip(ids.tolist(), mask.sum(1).tolist()):
        assert tuple(row[:len(specials.prefix)]) == specials.prefix
        assert tuple(row[n - len(specials.suffix):n]) == specials.suffix


# --- a GGUF file by config ---------------------------------------------------------------------------------
def test_a_local_gguf_trains_a_method_from_the_config_alone(tmp_path, synthetic_dataset):
    from gemsbench.cli import train as train_cli

    original = write_tiny_gguf(tmp_path / "tiny.gguf")
    spec = {"source": "hf", "name_or_path": str(tmp_path), "gguf_file": "tiny.gguf"}
    cache = tmp_path / "cache"
    cfg = {"results_dir": str(tmp_path / "results"), "cache_dir": str(cache), "device": "cpu", "seeds": [1],
           "datasets": {"syn": {"loader": "movielens"}}, "backbones": {"gguf": spec},
           "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "val_examples": 4, "precision": "fp32"},
           "methods": {"lora": {"method": "lora", "hparams": {"rank": 4, "alpha": 8}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    train_cli.run(argparse.Namespace(config=str(tmp_path / "config.yaml"), dataset="syn", backbone="gguf", run="lora",
                                     seed=1, data=str(synthetic_dataset.root), run_dir=str(run_dir), verbose=False))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_parameters"] > 0

    cached = gguf_cache_dir(cache, spec["name_or_path"], spec["gguf_file"])
    assert (cached / "config.json").exists()  # dequantised once, into the cache
    bb = load_backbone(spec, cache)
    weights, want = bb.model.state_dict(), original.state_dict()
    for name, tensor in want.items():  # the file's weights, up to Q8_0 rounding
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=float(tensor.abs().max()) / 100)
    assert SpecialTokens.of(bb.tokenizer) == SpecialTokens(prefix=(1,))  # add_bos_token of the file, kept


def test_t5_knowledge_space_without_the_head_equals_the_full_models(family_dirs):
    """K of a T5 collected through its encoder and decoder stacks = K collected through the whole model (which
    also projects every decoder position onto the vocabulary)."""
    from gems import collect_feature_moments, find_target_modules
    from gems.nullspace import FEATURE_SIDES

    from gemsbench.knowledge import collect_knowledge_space

    bb = load(family_dirs, "t5")
    space = KnowledgeSpace(articles=2, max_tokens=24)
    got, _ = collect_knowledge_space(bb.model, bb.tokenizer, space, True, batch_size=2)
    want = collect_feature_moments(bb.model, find_target_modules(bb.model),
                                   knowledge_batches(bb.tokenizer, space, 2, True), FEATURE_SIDES)
    for side in FEATURE_SIDES:
        assert got[side].keys() == want[side].keys()
        for name in want[side]:
            torch.testing.assert_close(got[side][name], want[side][name])
