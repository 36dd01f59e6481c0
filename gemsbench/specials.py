"""Special tokens: every backbone reads its inputs framed the way its own tokenizer frames a text.

A model is trained on what ``tokenizer(text)`` returns, not on the bare text tokens: Gemma and Llama-3 put a
beginning-of-text token in front of every text, T5 closes every encoder input with its end-of-sequence token,
SmolLM2 and Qwen2.5 add nothing. Reading a model without its token puts it in a state it never saw (a Gemma-3
270M model had perplexity 359–673 on short texts without its BOS and 4.6–4.9 with it). Which tokens a tokenizer
adds depends on the model and on the transformers version, so the suite asks the tokenizer itself
(:meth:`SpecialTokens.of`) and frames every sequence through this one class:

* a whole text — general text for perplexity and the knowledge space, and every encoder input — as
  ``tokenizer(text)`` encodes it: :meth:`SpecialTokens.text` (prefix + tokens + suffix);
* a decoder-only input the model goes on predicting from — a prompt, a timeline, a cloze prompt — with the
  prefix only: :meth:`SpecialTokens.context`. A suffix (an end-of-text token, which no supported decoder family
  adds) would close the text before the tokens the model is asked to predict.

Item tokens and every other piece of text are tokenised without special tokens (``add_special_tokens=False``) and
joined between this frame, so positions and labels are computed on the framed sequence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: text whose encoding with and without special tokens reveals what the tokenizer adds around a text
PROBE_TEXT = "Paris is the capital of France."


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids a backbone's tokenizer puts before (``prefix``) and after (``suffix``) the tokens of a text."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        """What ``tokenizer(text)`` adds around ``tokenizer(text, add_special_tokens=False)``: the tokens of the
        bare text must appear in the full encoding unchanged, everything before them is the prefix and everything
        after them the suffix."""
        bare = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(PROBE_TEXT)["input_ids"])
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return cls(tuple(full[:start]), tuple(full[start + len(bare):]))
        raise ValueError(f"{type(tokenizer).__name__} encodes {PROBE_TEXT!r} with special tokens as {full}, which "
                         f"does not contain its encoding without them ({bare}): the suite cannot tell which tokens "
                         "it adds around a text; use a tokenizer that only adds tokens before or after the text")

    def text(self, ids: Sequence[int]) -> list[int]:
        """A whole text (or an encoder input) as ``tokenizer(text)`` encodes it."""
        return [*self.prefix, *ids, *self.suffix]

    def context(self, ids: Sequence[int]) -> list[int]:
        """A decoder-only input the model continues: the prefix, then the tokens."""
        return [*self.prefix, *ids]

    def prompt(self, ids: Sequence[int], is_encoder_decoder: bool) -> list[int]:
        """A prompt whose answer the model predicts: the encoder input of an encoder-decoder
        (:meth:`text`), the context of a decoder-only model (:meth:`context`)."""
        return self.text(ids) if is_encoder_decoder else self.context(ids)

    def describe(self, tokenizer) -> str:
        """``prefix [<bos>] suffix []`` in the tokenizer's spelling, for logs and manifests."""
        spell = tokenizer.convert_ids_to_tokens
        return f"prefix {spell(list(self.prefix))} suffix {spell(list(self.suffix))}"
