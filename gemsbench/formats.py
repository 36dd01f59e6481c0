"""Training and evaluation formats: how examples become token sequences with labelled item positions, and
how sequences become batches.

* ``prompt`` — one target per example with the release's templates (every backbone). Recommendation
  examples show only recommendation events in their history (as the release does, ``rec_history``).
* ``timeline`` — decoder-only backbones: a user's training events form one sequence; a search event's query
  is written before its item; the loss sits at every item position, so one forward pass trains about as many
  targets as the window holds.

Batches are sized in tokens (``batch_tokens``), not in sequences, so that every pass does large matrix
products. On decoder-only backbones sequences are packed back to back into rows of ``pack_length`` tokens
(first-fit decreasing) with ``position_ids`` restarting at each sequence: the backbone then attends within each
sequence only, so a packed row computes exactly what the sequences would alone, without the padding a batch of
unequal sequences carries (a quarter of a padded timeline batch). Encoder-decoder backbones get padded rows of
similar length instead.

Every sequence is framed with the special tokens the backbone's own tokenizer adds (:mod:`gemsbench.specials`):
a decoder-only prompt or timeline starts with the family's beginning-of-text token where it has one (Gemma,
Llama-3), a T5 encoder input ends with its end-of-sequence token; label positions count those tokens.

A batch dict for :mod:`gemsbench.modeling` holds ``input_ids`` [B,T] and either ``position_ids`` [B,T]
(packed rows) or ``attention_mask`` [B,T] (padded rows, right padded); ``lengths`` [B] (real tokens per row),
``token_task`` [B,T] (0 rec, 1 search: the task of the event a token belongs to; at a labelled position, the
task of the target it predicts), ``example_task`` [B] (-1 for a row mixing tasks), ``label_pos`` [N,2] (row and
position whose hidden state predicts a target item), ``label_item`` [N], ``label_task`` [N]; encoder-decoder
batches add ``decoder_input_ids`` [B,1] (labels are then read at decoder position 0). Evaluation sequences hold
one label at the first generated position. Each task's loss stays separable via ``label_task``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from .specials import SpecialTokens

TASK_ID = {"rec": 0, "search": 1}

DEFAULT_TEMPLATES = {
    "rec": "Below is the user's interaction history: {history}. Please recommend the next item the user is "
           "likely to click.",
    "search": "Below is the user's interaction history: {history}. The user's search query is: {query}. "
              "Please predict the next item the user might click.",
}


@dataclass
class Sequence:
    """One encoded training unit or evaluation example."""

    ids: list[int]
    token_task: list[int]
    labels: list[tuple[int, int, int]]  # (position whose hidden state predicts the item, item, task id)
    task: int  # the task of its labels; -1 when they mix tasks


class TrainingFormat:
    """How one training format turns examples into sequences: its training units, how many targets each holds,
    its training and evaluation sequences, and which backbones it serves. One instance per format
    (:data:`FORMATS`); the :class:`Encoder` picks it once from ``FormatConfig.name`` and never compares the name
    again."""

    name: ClassVar[str]
    #: False when a packed row must hold one task only (a task's subset of a batch is then whole rows)
    rows_mix_tasks: ClassVar[bool]

    def check_backbone(self, is_encoder_decoder: bool) -> None:
        """A ValueError naming the fix when the format cannot serve the backbone. Default: every backbone."""

    def training_units(self, enc: "Encoder", train_examples: pd.DataFrame, events: pd.DataFrame) -> list:
        raise NotImplementedError

    def unit_targets(self, unit) -> int:
        raise NotImplementedError

    def train_sequence(self, enc: "Encoder", unit) -> Sequence:
        raise NotImplementedError

    def eval_sequence(self, enc: "Encoder", r) -> Sequence:
        """One evaluation example: its label sits at the first generated position (target = first target)."""
        raise NotImplementedError


class PromptFormat(TrainingFormat):
    """One target per example, with the release's templates (every backbone)."""

    name = "prompt"
    rows_mix_tasks = False

    def training_units(self, enc, train_examples, events):
        return [r for r in train_examples.itertuples(index=False)]

    def unit_targets(self, unit) -> int:
        return 1

    def train_sequence(self, enc, unit) -> Sequence:
        ids, tt = enc.prompt_sequence(unit.task, unit.query, unit.history, unit.history_task)
        return Sequence(ids, tt, [(len(ids) - 1, int(unit.targets[0]), TASK_ID[unit.task])], TASK_ID[unit.task])

    def eval_sequence(self, enc, r) -> Sequence:
        ids, tt = enc.prompt_sequence(r.task, r.query, r.history, r.history_task)
        return Sequence(ids, tt, [(len(ids) - 1, int(r.targets[0]), TASK_ID[r.task])], TASK_ID[r.task])


class TimelineFormat(TrainingFormat):
    """A user's training events as one sequence with the loss at every item position (decoder-only)."""

    name = "timeline"
    rows_mix_tasks = True

    def check_backbone(self, is_encoder_decoder: bool) -> None:
        if is_encoder_decoder:
            raise ValueError("the timeline format needs a decoder-only backbone; use format: prompt for T5")

    def training_units(self, enc, train_examples, events):
        """Windows of ``max_history`` events over each user's training events, cut from the end so every event
        after a window's first is a target once."""
        units = []
        w = enc.cfg.max_history
        train = events[events["split"] == "train"]
        for _, grp in train.groupby("user", sort=True):
            it, ta, qu = grp["item"].to_numpy(), grp["task"].to_numpy(), grp["query"].to_numpy()
            end = len(it)
            while end > 1:
                start = max(0, end - w)
                units.append((it[start:end], ta[start:end], qu[start:end]))
                end = start + 1  # the next window's last event is this window's first (context only here)
        return units

    def unit_targets(self, unit) -> int:
        return len(unit[0]) - 1

    def train_sequence(self, enc, unit) -> Sequence:
        items, tasks, queries = unit
        ids, tt, lab = enc.timeline_sequence(items, tasks, queries, n_targets=len(items) - 1)
        kinds = {t for _, _, t in lab}
        return Sequence(ids, tt, lab, kinds.pop() if len(kinds) == 1 else -1)

    def eval_sequence(self, enc, r) -> Sequence:
        keep = enc.cfg.max_history - 1
        items = list(r.history)[-keep:] + [int(r.targets[0])] if keep > 0 else [int(r.targets[0])]
        tasks = list(r.history_task)[-keep:] + [r.task] if keep > 0 else [r.task]
        queries = list(r.history_query)[-keep:] + [r.query] if keep > 0 else [r.query]
        ids, tt, lab = enc.timeline_sequence(items, tasks, queries, n_targets=1)
        ids, tt = ids[:-1], tt[:-1]  # drop the target token itself
        return Sequence(ids, tt, [(lab[0][0], int(r.targets[0]), TASK_ID[r.task])], TASK_ID[r.task])


#: format name (``train.format``) -> its strategy
FORMATS: dict[str, TrainingFormat] = {f.name: f for f in (PromptFormat(), TimelineFormat())}


@dataclass
class FormatConfig:
    name: str = "timeline"  # prompt | timeline
    max_history: int = 20  # history events shown (prompt) / events per window (timeline)
    rec_history: str = "rec_only"  # prompt format: rec examples show rec_only events (release) or all
    history_separator: str = ""  # text between history item tokens in prompts
    templates: dict = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    timeline_prefix: str = "User history:"
    timeline_search: str = " {query}:"  # written before a search event's item (short: tokens cost time)
    timeline_rec: str = ""  # written before a recommendation event's item

    def __post_init__(self):
        if self.name not in FORMATS:
            raise ValueError(f"unknown training format {self.name!r}; use one of {sorted(FORMATS)}")
        if self.rec_history not in ("rec_only", "all"):
            raise ValueError(f"rec_history must be rec_only or all, not {self.rec_history!r}")
        for task in TASK_ID:
            if "{history}" not in self.templates.get(task, ""):
                raise ValueError(f"the {task} prompt template must contain {{history}}")
        if "{query}" not in self.templates["search"]:
            raise ValueError("the search prompt template must contain {query}")


class Encoder:
    """Turns examples into batches for one backbone and format."""

    def __init__(self, tokenizer, item_token_ids: list[int], is_encoder_decoder: bool, cfg: FormatConfig,
                 decoder_start_token_id: int | None = None, pack_length: int = 0):
        self.format = FORMATS[cfg.name]
        self.format.check_backbone(is_encoder_decoder)
        self.tok = tokenizer
        self.items = item_token_ids
        self.enc_dec = is_encoder_decoder
        self.cfg = cfg
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.decoder_start = decoder_start_token_id
        if pack_length < 0:
            raise ValueError(f"pack_length={pack_length} must be >= 0 (0 = one sequence per row)")
        self.pack_length = pack_length
        self.specials = SpecialTokens.of(tokenizer)
        self._text_cache: dict[str, list[int]] = {}

    def text(self, s: str) -> list[int]:
        ids = self._text_cache.get(s)
        if ids is None:
            ids = self.tok(s, add_special_tokens=False)["input_ids"] if s else []
            self._text_cache[s] = ids
        return ids

    # --- sequences -------------------------------------------------------------------------------
    def prompt_sequence(self, task: str, query: str, history, history_task) -> tuple[list[int], list[int]]:
        """Token ids and per-token task of a prompt (without the target), framed as the backbone's tokenizer
        frames a prompt (:meth:`~gemsbench.specials.SpecialTokens.prompt`)."""
        if task == "rec" and self.cfg.rec_history == "rec_only":
            history = [h for h, t in zip(history, history_task) if t in ("rec", "")]
        history = list(history)[-self.cfg.max_history:]
        template = self.cfg.templates[task]
        before, after = template.split("{history}", 1)
        ids = self.text(before)
        sep = self.text(self.cfg.history_separator)
        for j, item in enumerate(history):
            if j and sep:
                ids = ids + sep
            ids = ids + [self.items[item]]
        if "{query}" in after:
            mid, end = after.split("{query}", 1)
            ids = ids + self.text(mid) + self.text(query) + self.text(end)
        else:
            ids = ids + self.text(after)
        ids = self.specials.prompt(ids, self.enc_dec)
        return ids, [TASK_ID[task]] * len(ids)

    def timeline_sequence(self, items, tasks, queries, n_targets: int):
        """A timeline over events; the last ``n_targets`` events are labelled. Returns ids, token tasks and
        (position, item, task) labels where the hidden state at ``position`` predicts ``item``. The sequence
        starts with the backbone's prefix tokens (:meth:`~gemsbench.specials.SpecialTokens.context`)."""
        ids = self.specials.context(self.text(self.cfg.timeline_prefix))
        token_task = [0] * len(ids)
        labels = []
        first_label = len(items) - n_targets
        for j, (item, task, query) in enumerate(zip(items, tasks, queries)):
            task = task if task in TASK_ID else "rec"
            lead = self.text(self.cfg.timeline_search.format(query=query)) if task == "search" \
                else self.text(self.cfg.timeline_rec)
            ids.extend(lead)
            token_task.extend([TASK_ID[task]] * len(lead))
            if j >= first_label:
                labels.append((len(ids) - 1, int(item), TASK_ID[task]))
                # the predicting position belongs to the target's task (with an empty rec lead it is the
                # previous event's item token), so per-token task routing sees the task being predicted
                token_task[-1] = TASK_ID[task]
            ids.append(self.items[item])
            token_task.append(TASK_ID[task])
        return ids, token_task, labels

    # --- training units (the format decides) ------------------------------------------------------
    def training_units(self, train_examples: pd.DataFrame, events: pd.DataFrame) -> list:
        """Prompt: one unit per training example. Timeline: windows of ``max_history`` events over each
        user's training events, cut from the end so every event after a window's first is a target once."""
        return self.format.training_units(self, train_examples, events)

    def unit_targets(self, unit) -> int:
        return self.format.unit_targets(unit)

    def train_sequence(self, unit) -> Sequence:
        return self.format.train_sequence(self, unit)

    def eval_sequence(self, r) -> Sequence:
        """One evaluation example: its label sits at the first generated position (target = first target)."""
        return self.format.eval_sequence(self, r)

    # --- batches -----------------------------------------------------------------------------------
    @property
    def packs(self) -> bool:
        """Whether batches pack several sequences into one row (decoder-only backbones, ``pack_length`` > 0)."""
        return not self.enc_dec and self.pack_length > 0

    def train_batches(self, units: list, batch_tokens: int) -> list[dict]:
        """The forward/backward passes of one optimizer step over ``units``: every unit exactly once, each pass
        within ``batch_tokens`` tokens (a longer sequence gets a pass of its own). How the units are split into
        passes does not change the step's gradient, only how large the matrix products are."""
        return [batch for _, batch in self.passes([self.train_sequence(u) for u in units], batch_tokens)]

    def eval_batches(self, examples: pd.DataFrame, batch_tokens: int) -> Iterator[tuple[list[int], dict]]:
        """Scoring passes over ``examples``, each within ``batch_tokens`` tokens. Yields ``(positions, batch)``:
        the batch's labels belong to ``examples.iloc[positions]``, in that order."""
        seqs = [self.eval_sequence(r) for r in examples.itertuples(index=False)]
        yield from self.passes(seqs, batch_tokens)

    def passes(self, seqs: list[Sequence], batch_tokens: int) -> list[tuple[list[int], dict]]:
        """Split sequences into batches of at most ``batch_tokens`` tokens (rows × width): packed rows of
        ``pack_length`` tokens where the backbone allows it, else padded rows of similar length. Returns
        ``(indices, batch)`` pairs; a batch's labels follow its ``indices`` order."""
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens={batch_tokens} must be >= 1")
        if not seqs:
            return []
        if not self.packs:
            order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))  # shortest first, stable
            out, group = [], []
            for i in order:
                if group and (len(group) + 1) * len(seqs[i].ids) > batch_tokens:
                    out.append((group, self.collate([seqs[j] for j in group])))
                    group = []
                group.append(i)
            out.append((group, self.collate([seqs[j] for j in group])))
            return out
        width = max(self.pack_length, max(len(s.ids) for s in seqs))
        # prompt rows hold one task each, so a row's task subset is whole rows (subset_batch)
        groups = [None] if self.format.rows_mix_tasks else sorted({s.task for s in seqs})
        rows = [row for g in groups for row in pack_rows(
            [(i, len(s.ids)) for i, s in enumerate(seqs) if g is None or s.task == g], width)]
        per_pass = max(1, batch_tokens // width)
        out = []
        for start in range(0, len(rows), per_pass):
            part = rows[start:start + per_pass]
            indices = [i for row in part for i in row]
            out.append((indices, self.collate_packed([[seqs[i] for i in row] for row in part])))
        return out

    def collate_train(self, units: list) -> dict:
        """One padded row per unit, in order."""
        return self.collate([self.train_sequence(u) for u in units])

    def collate_eval(self, examples: pd.DataFrame) -> dict:
        """One padded row per example, in order."""
        return self.collate([self.eval_sequence(r) for r in examples.itertuples(index=False)])

    def collate(self, seqs: list[Sequence]) -> dict:
        """One sequence per row, right padded (``attention_mask`` 0 on padding)."""
        B, T = len(seqs), max(len(s.ids) for s in seqs)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        token_task = torch.zeros((B, T), dtype=torch.long)
        for b, s in enumerate(seqs):
            input_ids[b, : len(s.ids)] = torch.tensor(s.ids)
            mask[b, : len(s.ids)] = 1
            token_task[b, : len(s.token_task)] = torch.tensor(s.token_task)
        labels = [(b, p, it, tk) for b, s in enumerate(seqs) for p, it, tk in s.labels]
        batch = {"input_ids": input_ids, "attention_mask": mask, "token_task": token_task,
                 "example_task": torch.tensor([s.task for s in seqs], dtype=torch.long),
                 "lengths": mask.sum(1), **_label_tensors(labels)}
        if self.enc_dec:
            batch["decoder_input_ids"] = torch.full((B, 1), self.decoder_start, dtype=torch.long)
            batch["label_pos"][:, 1] = 0
        return batch

    def collate_packed(self, rows: list[list[Sequence]]) -> dict:
        """Several sequences per row, back to back: ``position_ids`` restart at 0 with each sequence, which is
        what tells the backbone to attend within each sequence only (block-diagonal causal attention; the
        padding at a row's end is a segment of its own). Labels follow the rows' sequence order."""
        B, T = len(rows), max(sum(len(s.ids) for s in row) for row in rows)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        token_task = torch.zeros((B, T), dtype=torch.long)
        lengths, ex_task, labels = [], [], []
        for b, row in enumerate(rows):
            at = 0
            for s in row:
                n = len(s.ids)
                input_ids[b, at:at + n] = torch.tensor(s.ids)
                position_ids[b, at:at + n] = torch.arange(n)
                token_task[b, at:at + n] = torch.tensor(s.token_task)
                labels += [(b, at + p, it, tk) for p, it, tk in s.labels]
                at += n
            position_ids[b, at:] = torch.arange(T - at)
            lengths.append(at)
            tasks = {s.task for s in row}
            ex_task.append(tasks.pop() if len(tasks) == 1 else -1)
        return {"input_ids": input_ids, "position_ids": position_ids, "token_task": token_task,
                "example_task": torch.tensor(ex_task, dtype=torch.long),
                "lengths": torch.tensor(lengths, dtype=torch.long), **_label_tensors(labels)}


def pack_rows(lengths: list[tuple[int, int]], width: int) -> list[list[int]]:
    """First-fit decreasing: ``(index, length)`` pairs into rows of at most ``width`` tokens (a longer one
    gets a row of its own); rows come out in the order they were opened, each row's indices in the order they
    were placed. Deterministic: ties in length keep their input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in sorted(lengths, key=lambda p: -p[1]):
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(width - n)
    return rows


def _label_tensors(labels: list[tuple[int, int, int, int]]) -> dict:
    arr = torch.tensor(labels, dtype=torch.long).reshape(-1, 4)
    return {"label_pos": arr[:, :2].clone(), "label_item": arr[:, 2].clone(), "label_task": arr[:, 3].clone()}


def subset_batch(batch: dict, task: int) -> dict | None:
    """The rows of a batch whose labels all belong to ``task`` (prompt format: disjoint task subsets; packed
    prompt rows hold one task each)."""
    rows = torch.nonzero(batch["example_task"] == task).flatten()
    if len(rows) == 0:
        return None
    remap = torch.full((len(batch["example_task"]),), -1, dtype=torch.long)
    remap[rows] = torch.arange(len(rows))
    keep = remap[batch["label_pos"][:, 0]] >= 0
    out = {k: v[rows] for k, v in batch.items() if k not in ("label_pos", "label_item", "label_task")}
    pos = batch["label_pos"][keep].clone()
    pos[:, 0] = remap[pos[:, 0]]
    out.update(label_pos=pos, label_item=batch["label_item"][keep], label_task=batch["label_task"][keep])
    width = int(out["lengths"].max())  # trim padding the subset no longer needs
    for k in ("input_ids", "attention_mask", "position_ids", "token_task"):
        if k in out:
            out[k] = out[k][:, :width]
    return out


def batch_tokens(batch: dict) -> int:
    """Real (non-padding) tokens of a batch."""
    return int(batch["lengths"].sum())


def count_labels(batch: dict) -> tuple[int, int]:
    n_search = int(batch["label_task"].sum())
    return len(batch["label_task"]) - n_search, n_search


def shuffled_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of training units in an epoch: a function of (seed, epoch) only, so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n)
