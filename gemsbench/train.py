"""The training loop every LLM method shares.

It owns batching (formats), autocast, gradient accumulation, per-task gradients, the learning-rate
schedule, the JSON-lines training log, validation-based model selection and exact resume. A method only
says how to wrap the model, which optimizer to build and how to step (:class:`~gemsbench.methods.base.LLMMethod`).

Per-task gradients (method.md §3): the joint loss is the token mean over both tasks, so its gradient is the
token-count-weighted sum of the two task gradients. When a method asks for them (or the conflict analysis
does), the loop gets both from :class:`gems.TaskSplit` and derives the joint gradient from them instead of
computing it a third time: in the prompt format every row holds one task, so ONE backward pass per
micro-batch gives both, its rows split by task; in the timeline format rows mix tasks, and one shared
forward pass is followed by one backward pass per task.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import os
import resource
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from gems.targets import DEFAULT_TARGETS
from gems.task_split import TaskSplit

from .atomic import RETRAIN, atomic_torch_save, torch_load
from .backbone import add_item_tokens, load_backbone
from .distributed import Reducer, current, joined, local_device, shard
from .errors import TrainingError  # noqa: F401 - raised here, defined where entry points can catch it cheaply
from .evaluate import sampled_candidates
from .formats import Encoder, FormatConfig, batch_tokens, count_labels, shuffled_order, subset_batch
from .methods.base import LLMMethod, RunContext, TaskGradients
from .metrics import metrics_from_ranks, target_ranks
from .modeling import (autocast, packed_attention_is_exact, resolve_precision, score_items, scores_and_loss_sums,
                       task_loss_sums)
from .throughput import StepWork, body_parameters, gemm_rate

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """The ``train`` section of the config (defaults and sources in workflow/schemas/config.schema.yaml)."""

    format: str = "timeline"
    max_history: int = 20
    rec_history: str = "rec_only"
    history_separator: str = ""
    templates: dict = field(default_factory=dict)
    max_steps: int = 200
    max_epochs: float = 0.0
    patience: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    batch_tokens: int = 2048
    pack_length: int = 128
    warmup_ratio: float = 0.01
    schedule: str = "cosine"
    precision: str = "auto"
    loss_vocab: str = "full"
    item_init: str = "title_mean"
    item_lr_scale: float = 1.0
    eval_every: int = 100
    val_examples: int = 200
    selection: str = "ndcg@5"
    max_grad_norm: float = 1.0
    conflict_every: int = 0
    checkpoint_every: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainingError(f"unknown train setting(s) {sorted(unknown)}; known: {sorted(known)}")
        s = cls(**d)
        if s.schedule not in ("cosine", "constant"):
            raise TrainingError(f"train.schedule must be cosine or constant, not {s.schedule!r}")
        if s.max_steps <= 0 and s.max_epochs <= 0:
            raise TrainingError("set train.max_steps or train.max_epochs to a positive value")
        if not (s.selection == "val_loss" or s.selection == "last" or s.selection.startswith("ndcg@")):
            raise TrainingError(f"train.selection must be val_loss, last or ndcg@K, not {s.selection!r}")
        return s

    def format_config(self) -> FormatConfig:
        kw = dict(name=self.format, max_history=self.max_history, rec_history=self.rec_history,
                  history_separator=self.history_separator)
        if self.templates:
            kw["templates"] = self.templates
        return FormatConfig(**kw)


def resolve_device(device: str) -> str:
    """``auto`` becomes CUDA where available, else the CPU; a bare ``cuda`` becomes this process's own GPU when
    ``torchrun`` started several (:func:`gemsbench.distributed.local_device`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return local_device(device)


@dataclass
class Built:
    model: torch.nn.Module
    encoder: Encoder
    item_ids: torch.Tensor
    is_encoder_decoder: bool
    precision: str  # resolved: bf16 or fp32
    body_parameters: int  # the backbone's weights outside its embeddings and head (model FLOPs: 6·N per token)
    head_shape: tuple[int, int]  # (vocabulary rows, hidden size) of the output head


def build(method: LLMMethod, ctx: RunContext, settings: TrainSettings) -> Built:
    """Backbone + item tokens + the method's wrapping, deterministic under ``ctx.seed``."""
    torch.manual_seed(ctx.seed)
    bb = load_backbone(ctx.backbone, Path(ctx.backbone.get("cache_root", "cache")))
    add_item_tokens(bb, ctx.dataset.items["title"].fillna("").tolist(), settings.item_init, seed=ctx.seed)
    pack_length = settings.pack_length
    if pack_length and not bb.is_encoder_decoder and not packed_attention_is_exact(bb.model):
        log.warning("%s does not keep packed sequences apart (its attention ignores restarting position ids): "
                    "training and scoring with one sequence per row instead", type(bb.model).__name__)
        pack_length = 0
    n_body = body_parameters(bb.model)
    head_shape = tuple(bb.model.get_output_embeddings().weight.shape)
    torch.manual_seed(ctx.seed)
    model = method.prepare_model(bb.model, bb.item_token_ids)
    device = resolve_device(ctx.device)
    model.to(device)
    start = getattr(bb.model.config, "decoder_start_token_id", None)
    enc = Encoder(bb.tokenizer, bb.item_token_ids, bb.is_encoder_decoder, settings.format_config(), start,
                  pack_length=pack_length)
    return Built(model, enc, torch.tensor(bb.item_token_ids, device=device), bb.is_encoder_decoder,
                 resolve_precision(settings.precision, device), n_body, head_shape)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise TrainingError(f"checkpoint does not fit the model: missing {missing[:3]}, unknown {unknown[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device))


def lr_lambda(settings: TrainSettings, total: int):
    warm = max(1, int(round(settings.warmup_ratio * total)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if settings.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def validation_subset(valid: pd.DataFrame, n: int) -> pd.DataFrame:
    """The same validation examples for every method: up to n per task, chosen with a fixed seed."""
    parts = []
    for _, grp in valid.groupby("task", sort=True):
        order = np.random.default_rng(0).permutation(len(grp))[:n]
        parts.append(grp.iloc[np.sort(order)])
    return pd.concat(parts, ignore_index=True)


class Loop:
    """One training run of an LLM method."""

    #: prompt format: both task gradients from one backward pass, rows split by task (False: one pass per task,
    #: the reference the tests compare against)
    split_rows: bool = True

    def __init__(self, method: LLMMethod, ctx: RunContext):
        self.method, self.ctx = method, ctx
        self.s = TrainSettings.from_dict(ctx.train)
        self.device = resolve_device(ctx.device)
        self.b = build(method, ctx, self.s)
        self.model = self.b.model
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.param_layers = [targeted_layer(n) for n, _ in named]  # for per-matrix conflict cosines
        if not self.params:
            raise TrainingError(f"method {method.name!r} left no trainable parameter")
        self.units = self.b.encoder.training_units(ctx.dataset.splits["train"], ctx.dataset.events)
        if not self.units:
            raise TrainingError("no training units: the train split is empty for this format")
        per_step = self.s.batch_size * self.s.grad_accum
        self.world = current()
        if per_step % self.world.size:
            raise TrainingError(
                f"a global batch of train.batch_size × train.grad_accum = {self.s.batch_size} × {self.s.grad_accum}"
                f" = {per_step} units cannot be split evenly over {self.world.size} processes: start a number of "
                f"processes that divides {per_step} (config key `processes`), or change train.batch_size")
        self.reducer = Reducer(self.world, self.device)
        # every process starts from rank 0's weights (they are built alike under the seed; this makes it certain)
        self.reducer.broadcast_(self.params)
        # max_epochs, when set, decides the length (and so the schedule); max_steps then caps it
        by_epochs = math.ceil(self.s.max_epochs * len(self.units) / per_step) if self.s.max_epochs > 0 else None
        self.total_steps = min(by_epochs, self.s.max_steps) if by_epochs and self.s.max_steps > 0 \
            else (by_epochs or self.s.max_steps)
        self.optimizer = method.build_optimizer(self.model, self.total_steps)
        #: parameters whose joint gradient the optimizer derives from the task gradients (p.grad left None)
        self.joint_free = method.joint_from_task_gradients(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.s, self.total_steps))
        self.valid = validation_subset(ctx.dataset.splits["valid"], self.s.val_examples)
        self.run_dir = Path(ctx.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoint"
        self.spec = self.run_spec()
        self.step = 0
        self.best = {"metric": None, "step": -1, "evals_since": 0}
        self.item_rows = method.item_rows(self.model, self.b.encoder.items) if self.s.item_lr_scale != 1 else []
        vocab_rows, hidden = self.b.head_shape
        self.head_width = hidden * (vocab_rows if self.s.loss_vocab == "full" else len(self.b.item_ids))
        self.work = StepWork()
        self._task_split: TaskSplit | None = None  # hooks for per-task gradients, made on first use
        self._orders: dict[int, np.ndarray] = {}  # epoch -> unit order (a function of seed and epoch)

    # --- data ---------------------------------------------------------------------------------
    def step_units(self, step: int) -> list:
        per_step = self.s.batch_size * self.s.grad_accum
        n = len(self.units)
        out = []
        for g in range(step * per_step, (step + 1) * per_step):
            epoch, pos = divmod(g, n)
            if epoch not in self._orders:
                self._orders = {epoch: shuffled_order(n, self.ctx.seed, epoch)}
            out.append(self.units[self._orders[epoch][pos]])
        return out

    def micro_batches(self, step: int) -> list[dict]:
        """This process's forward/backward passes of the step (its shard of the global batch, the whole batch for
        one process), each within ``batch_tokens`` tokens (formats.Encoder.passes)."""
        units = shard(self.step_units(step), self.world)
        return [self._to_device(b) for b in self.b.encoder.train_batches(units, self.s.batch_tokens)]

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    # --- gradients ----------------------------------------------------------------------------
    def losses(self, batch: dict, head_per_task: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        self.work.forward_tokens += batch_tokens(batch)
        self.work.forward_labels += len(batch["label_item"])
        self.method.before_forward(self.model, batch)
        with autocast(self.device, self.b.precision):
            return task_loss_sums(self.model, batch, self.b.item_ids, self.b.is_encoder_decoder, self.s.loss_vocab,
                                  head_per_task)

    def joint_backward(self, batches: list[dict], n_rec: int, n_search: int) -> tuple[float, float]:
        """The joint gradient of the step into ``p.grad`` (``n_rec``/``n_search``: the step's global target counts,
        so that the gradients of several processes sum to it); returns the task losses."""
        n = n_rec + n_search
        tot_rec = tot_search = 0.0
        for batch in batches:
            rec, search = self.losses(batch)
            ((rec + search) / n).backward()
            self._count_backward(batch)
            tot_rec += rec.item()
            tot_search += search.item()
        if self.reducer.active:
            # a parameter no process's loss reached keeps p.grad None, as in one process (AdamW then skips it)
            reached = self.reducer.sum_values([p.grad is not None for p in self.params])
            for p, hit in zip(self.params, reached):
                if p.grad is None and hit:
                    p.grad = torch.zeros_like(p)
            self.reducer.sum_([p.grad for p in self.params if p.grad is not None])
            tot_rec, tot_search = self.reduce_step_values([tot_rec, tot_search])
        return tot_rec / max(n_rec, 1), tot_search / max(n_search, 1)

    def reduce_step_values(self, losses: list[float]) -> list[float]:
        """Sum the loss values and this step's work (tokens, labels) over the processes; returns the losses."""
        work = [getattr(self.work, f.name) for f in fields(self.work)]
        summed = self.reducer.sum_values(losses + work)
        for f, value in zip(fields(self.work), summed[len(losses):]):
            setattr(self.work, f.name, int(value))
        return summed[:len(losses)]

    def task_backward(self, batches: list[dict], n_rec: int, n_search: int) -> TaskGradients:
        """Both task gradients of the step (:class:`gems.TaskSplit`); leaves the joint gradient in ``p.grad``.

        ``prompt`` format: ONE backward pass per micro-batch, its rows split by task (every prompt row holds one
        task), when ``split_rows`` is on; else (the reference) one forward and backward pass per task subset.
        ``timeline``: one shared forward pass, one backward pass per task."""
        if self._task_split is None:
            self._task_split = TaskSplit(self.model, self.params)
        split = self._task_split
        scale = (1 / max(n_rec, 1), 1 / max(n_search, 1))
        for batch in batches:
            if self.s.format == "prompt" and self.split_rows:
                with split.rows(batch["example_task"], batch["label_task"]):
                    rec, search = self.losses(batch)
                split.backward(rec * scale[0], search * scale[1])
                self._count_backward(batch)
            elif self.s.format == "prompt":
                for t in (0, 1):
                    sub = subset_batch(batch, t)
                    if sub is not None:
                        split.backward_task(t, self.losses(sub)[t] * scale[t])
                        self._count_backward(sub)
            else:
                rec, search = self.losses(batch, head_per_task=True)
                n_lab = count_labels(batch)
                # each task's backward pass runs through the whole shared graph, and the head at its own labels
                split.backward(rec * scale[0] if n_lab[0] else rec.detach(),
                               search * scale[1] if n_lab[1] else search.detach())
                for c in n_lab:
                    if c:
                        self._count_backward(batch, labels=c)
        if self.reducer.active:
            # both task gradients summed over the processes BEFORE the joint one is formed from them
            for task in split.grads:
                task[:] = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, task)]
            self.reducer.sum_(split.grads[0] + split.grads[1])
            split.loss_values = self.reduce_step_values(list(split.loss_values))
        loss_rec, loss_search = split.loss_values
        rec, search = split.finish(n_rec, n_search, without_joint=self.joint_free)
        return TaskGradients(self.params, rec, search, n_rec, n_search, loss_rec, loss_search)

    def clip(self, tg: TaskGradients | None) -> None:
        """Clip the joint gradient's norm; scale the task gradients by the same factor so that methods which
        rebuild the update from them (PCGrad, GEMS) see the clipped step too. The joint gradient of a parameter
        left without ``p.grad`` (``joint_from_task_gradients``) is formed one tensor at a time for its norm."""
        derived = [] if tg is None else [(r, s) for p, r, s in zip(tg.params, tg.rec, tg.search)
                                         if p.grad is None and (r is not None or s is not None)]
        if derived:
            w = tg.n_search / (tg.n_rec + tg.n_search)
            norms = [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]
            norms += [torch.linalg.vector_norm(r if s is None else s if r is None else torch.lerp(r, s, w))
                      for r, s in derived]
            norm = torch.linalg.vector_norm(torch.stack(norms))
            coef = min(1.0, self.s.max_grad_norm / (float(norm) + 1e-6))
            if coef < 1.0:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(coef)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.s.max_grad_norm)
            coef = min(1.0, self.s.max_grad_norm / (float(norm) + 1e-6))
        if tg is not None and coef < 1.0:
            for g in tg.rec + tg.search:
                if g is not None:
                    g.mul_(coef)

    def _count_backward(self, batch: dict, labels: int | None = None) -> None:
        """Count one backward pass over ``batch`` (its head products at ``labels`` positions: default all)."""
        self.work.backward_tokens += batch_tokens(batch)
        self.work.backward_labels += len(batch["label_item"]) if labels is None else int(labels)

    def scale_item_updates(self, before: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]) -> None:
        """``train.item_lr_scale``: the item-token rows' update of this step, multiplied by the scale. Adam-type
        updates are linear in the learning rate, so this equals a learning rate ``scale`` times larger on those
        rows, for any optimizer and any way a method holds the rows."""
        k = self.s.item_lr_scale
        with torch.no_grad():
            for param, rows, old in before:
                if rows is None:
                    param.copy_(torch.lerp(old, param, k))  # old + k · (new − old)
                else:
                    param[rows] = torch.lerp(old, param[rows], k)

    def item_rows_before_step(self) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        return [(param, rows, (param if rows is None else param[rows]).detach().clone())
                for param, rows in self.item_rows]

    # --- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        k = int(self.s.selection.split("@")[1]) if self.s.selection.startswith("ndcg@") else 5
        ndcg, losses = np.empty(len(self.valid)), []
        for positions, batch in self.b.encoder.eval_batches(self.valid, self.s.batch_tokens):
            batch = self._to_device(batch)
            self.method.before_forward(self.model, batch)
            with autocast(self.device, self.b.precision):
                scores, rec, search = scores_and_loss_sums(self.model, batch, self.b.item_ids,
                                                           self.b.is_encoder_decoder, self.s.loss_vocab)
            losses.append((rec + search).item())
            s, is_t, valid = sampled_candidates(scores.float().cpu(), self.valid.iloc[positions])
            ndcg[positions] = metrics_from_ranks(target_ranks(s, is_t, valid), is_t, (k,))[f"ndcg@{k}"]
        self.model.train()
        by_task = pd.Series(ndcg).groupby(self.valid["task"].to_numpy()).mean()
        return {f"val_ndcg@{k}": float(by_task.mean()), "val_loss": float(sum(losses) / len(self.valid)),
                **{f"val_ndcg@{k}_{t}": float(v) for t, v in by_task.items()}}

    def stopped_early(self) -> bool:
        """Early stopping: ``patience`` validations in a row without improving the selection metric."""
        return self.s.patience > 0 and self.best["evals_since"] >= self.s.patience

    def selection_value(self, val: dict) -> float:
        if self.s.selection == "val_loss":
            return -val["val_loss"]
        if self.s.selection == "last":
            return float(self.step)
        return val[f"val_{self.s.selection}"]

    # --- checkpoints ----------------------------------------------------------------------------
    def run_spec(self) -> dict:
        """Everything that decides this run's result, as its resume checkpoint records it: the method and its
        hyper-parameters, every train setting, the seed, the backbone, and the prepared dataset's parameters and
        statistics (meta.json, stats.json) — code defaults included, since the method's hyper-parameters, the
        train settings and the loader's parameters are all stored with their defaults filled in — and the
        precision the run computes in. Where the cache lives and which device trains are left out."""
        spec = {"method": self.method.name, "hparams": self.method.hparams, "train": asdict(self.s),
                "precision": self.b.precision,  # what precision: auto resolved to on this machine
                "seed": self.ctx.seed, "backbone": {k: v for k, v in self.ctx.backbone.items() if k != "cache_root"},
                "dataset": {"meta": self.ctx.dataset.meta, "stats": self.ctx.dataset.stats}}
        return json.loads(json.dumps(spec, sort_keys=True, default=str))  # tuples as lists, as stored

    def save_last(self) -> None:
        """The resume checkpoint, written by rank 0 (every process holds the same weights and optimizer state)."""
        if not self.world.main:
            return
        atomic_torch_save({"step": self.step, "model": trainable_state(self.model),
                           "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                           "torch_rng": torch.get_rng_state(), "best": self.best,
                           "spec": json.dumps(self.spec, sort_keys=True)}, self.ckpt_dir / "last.pt")

    def discard_checkpoints(self) -> None:
        """Remove the resume and best checkpoints: what a run starting over must not continue or select."""
        if not self.world.main:
            return
        for name in ("last.pt", "best.pt"):
            (self.ckpt_dir / name).unlink(missing_ok=True)

    def try_resume(self) -> bool:
        """Continue from ``last.pt`` when it was written for this very run spec. One written for another spec
        (a changed hyper-parameter, setting, dataset, backbone, seed or code default) is never continued: the
        run starts over, with a warning naming what changed. Rank 0 decides; every process then loads the same
        checkpoint, whatever number of processes wrote it (its contents do not depend on it)."""
        path = self.ckpt_dir / "last.pt"
        ck = self.matching_checkpoint(path) if self.world.main else None
        if not self.reducer.broadcast(ck is not None):
            return False
        if ck is None:
            ck = torch_load(path, "delete it; the run then starts over from step 0", map_location=self.device)
        load_trainable_state(self.model, ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        self.step, self.best = ck["step"], ck["best"]
        log.info("resumed %s at step %d", self.run_dir, self.step)
        return True

    def matching_checkpoint(self, path: Path) -> dict | None:
        """The resume checkpoint at ``path`` when it was written for this very run spec; else None, and the
        checkpoints are discarded (with a warning naming what changed, when one was written for another spec)."""
        if not path.exists():
            self.discard_checkpoints()
            return None
        ck = torch_load(path, "delete it; the run then starts over from step 0", map_location=self.device)
        recorded = json.loads(ck["spec"]) if "spec" in ck else None
        if recorded != self.spec:
            changed = "no run spec recorded: an earlier version of this suite wrote it" if recorded is None \
                else "; ".join(spec_changes(recorded, self.spec))
            log.warning("%s was written for another run spec (%s): starting over from step 0", path, changed)
            self.discard_checkpoints()
            return None
        return ck

    def diverged(self, loss_rec: float, loss_search: float) -> TrainingError:
        """The error that stops a run whose loss is no longer finite, with advice that fits the run. The resume
        checkpoint is dropped: its weights may already be on the way to divergence, and a rerun continuing
        them would diverge again."""
        if self.world.main:
            (self.ckpt_dir / "last.pt").unlink(missing_ok=True)
        advice = [f"lower the learning rate (hparams.lr = {self.method.hparams['lr']:g})"
                  if "lr" in self.method.hparams else "lower the learning rate"]
        if self.s.precision != "fp32":
            advice.append(f"train in full precision (train.precision: fp32 instead of {self.s.precision})")
        if self.s.max_grad_norm <= 0:
            advice.append("clip the gradient norm (train.max_grad_norm: 1.0; it is off)")
        return TrainingError(
            f"non-finite loss at step {self.step} (rec {loss_rec}, search {loss_search}) for method "
            f"{self.method.name!r}: the run diverged. To fix it, {' or '.join(advice)}. Its resume checkpoint "
            f"was dropped, so the rerun starts over from step 0.")

    # --- main -----------------------------------------------------------------------------------
    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        first_step = self.step
        main = self.world.main  # rank 0 writes the log and the checkpoints; every process trains alike
        log_path = self.run_dir / "train_log.jsonl" if main else Path(os.devnull)
        kept = []
        if main and resumed and log_path.exists():
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] < self.step]
        if main:
            log_path.write_text("".join(line + "\n" for line in kept))
        self.model.train()
        t_start = time.time()
        load_start = os.getloadavg()[0]
        train_seconds, targets_seen = 0.0, 0
        timed_seconds, timed_steps = 0.0, 0  # the method's own cost: without conflict measurement
        timed = StepWork()  # tokens and passes of the timed steps (model FLOPs, MFU)
        ckpt_every = self.s.checkpoint_every or self.s.eval_every
        with open(log_path, "a") as logf, tqdm(total=self.total_steps, initial=self.step, disable=not main,
                                               desc=f"train {self.method.name}", mininterval=5) as bar:
            while self.step < self.total_steps and not self.stopped_early():
                t0 = time.time()
                self.work = StepWork()
                batches = self.micro_batches(self.step)
                counts = [count_labels(b) for b in batches]
                # the global counts weight every process's losses (a process may hold no example of a task)
                n_rec, n_search, tokens, passes = map(int, self.reducer.sum_values(
                    [sum(c[0] for c in counts), sum(c[1] for c in counts), sum(batch_tokens(b) for b in batches),
                     len(batches)]))
                conflict_step = bool(self.s.conflict_every and self.step % self.s.conflict_every == 0)
                want_tasks = self.method.uses_task_gradients or conflict_step
                self.method.conflict_step = conflict_step  # GEMS adds its subspace cosines on these steps
                entry = {"step": self.step}
                log_seconds = 0.0  # time spent measuring conflict, not training (left out of the step time)
                # a method that needs no task gradients pays a second backward pass only for the measurement
                measurement_pass = want_tasks and not self.method.uses_task_gradients
                if want_tasks:
                    tg = self.task_backward(batches, n_rec, n_search)
                    loss_rec, loss_search = tg.loss_rec, tg.loss_search
                    if n_rec and n_search and conflict_step:
                        t_log = time.time()
                        entry["cos_rec_search"] = task_cosine(tg)
                        entry["cos_layers"] = layer_cosines(tg, self.param_layers)
                        log_seconds += time.time() - t_log
                else:
                    tg = None
                    loss_rec, loss_search = self.joint_backward(batches, n_rec, n_search)
                if not (math.isfinite(loss_rec) and math.isfinite(loss_search)):
                    raise self.diverged(loss_rec, loss_search)
                if self.s.max_grad_norm > 0:
                    self.clip(tg)
                before = self.item_rows_before_step() if self.item_rows else None
                extra = self.method.optimizer_step(self.optimizer, tg)
                # the task gradients (two tensors the size of every trainable weight) are spent: dropped here,
                # not when the next step's task_backward returns, they would sit beside its accumulators
                tg = None
                if before:
                    self.scale_item_updates(before)
                log_seconds += float(extra.pop("log_seconds", 0.0))
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                dt = time.time() - t0
                train_seconds += dt
                targets_seen += n_rec + n_search
                if not measurement_pass:
                    timed_seconds += dt - log_seconds
                    timed_steps += 1
                    timed.add(self.work)
                if self.reducer.active:
                    entry["processes"] = self.world.size
                    entry["allreduce_bytes"] = self.reducer.take_bytes()
                entry.update(loss_rec=loss_rec if n_rec else None, loss_search=loss_search if n_search else None,
                             n_rec=n_rec, n_search=n_search, tokens=tokens,
                             passes=passes, model_flops=self.work.flops(self.b.body_parameters,
                                                                               self.head_width),
                             lr=self.scheduler.get_last_lr()[0], seconds=dt,
                             log_seconds=round(log_seconds, 4), measurement_pass=measurement_pass,
                             **extra)
                self.step += 1
                if self.step % self.s.eval_every == 0 or self.step == self.total_steps:
                    self.reducer.check_same(self.params, "weights")
                    # rank 0 validates the whole subset: the selection every process follows
                    val = self.reducer.broadcast(self.validate() if main else None)
                    entry.update(val)
                    value = self.selection_value(val)
                    if self.best["metric"] is None or value > self.best["metric"]:
                        self.best = {"metric": value, "step": self.step, "evals_since": 0}
                        if main:
                            atomic_torch_save(trainable_state(self.model), self.ckpt_dir / "best.pt")
                    else:
                        self.best["evals_since"] += 1
                logf.write(json.dumps(entry) + "\n")
                logf.flush()
                # a finished run needs no resume point (last.pt is dropped below): writing the weights and
                # optimizer state once more at the end would cost a full checkpoint write for nothing
                finished = self.step == self.total_steps or self.stopped_early()
                if self.step % ckpt_every == 0 and not finished:
                    self.save_last()
                bar.update(1)
                bar.set_postfix(rec=f"{loss_rec:.3f}", search=f"{loss_search:.3f}")
        # last.pt (weights + optimizer state) only serves resuming an interrupted run: drop it once finished
        if main:
            (self.ckpt_dir / "last.pt").unlink(missing_ok=True)
        flops = timed.flops(self.b.body_parameters, self.head_width)
        gemm = gemm_rate(self.b.precision, self.device) if timed_seconds > 0 else None
        summary = {
            "method": self.method.name, "steps": self.step, "resumed": resumed,
            "wall_seconds": time.time() - t_start, "train_seconds": train_seconds,
            "targets_seen_this_session": targets_seen,
            "targets_per_second": targets_seen / train_seconds if train_seconds else None,
            # the method's own cost per step: steps with a measurement-only second backward pass left out,
            # and the time spent computing the logged cosines subtracted (seconds_per_step_all keeps them)
            "seconds_per_step": timed_seconds / timed_steps if timed_steps else
            train_seconds / max(1, self.step - first_step),
            "seconds_per_step_all": train_seconds / max(1, self.step - first_step),
            # throughput of the timed steps (module gemsbench.throughput: what the model FLOPs count)
            "tokens_per_second": timed.forward_tokens / timed_seconds if timed_seconds else None,
            "model_flops_per_second": flops / timed_seconds if timed_seconds else None,
            "gemm_flops_per_second": gemm, "mfu": flops / timed_seconds / gemm if gemm else None,
            "precision": self.b.precision, "body_parameters": self.b.body_parameters,
            "trainable_parameters": int(sum(p.numel() for p in self.params)),
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "total_steps": self.total_steps, "stopped_early": self.stopped_early(),
            "best_step": self.best["step"], "selection": self.s.selection, "best_value": self.best["metric"],
            "units": len(self.units), "format": self.s.format, "device": self.device,
            "targets_per_epoch": sum(self.b.encoder.unit_targets(u) for u in self.units),
            # 1-minute load average of the machine at start and end: timings taken beside other jobs read higher
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "processes": self.world.size,
        }
        return summary


def spec_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every (dotted) key whose value differs between two run specs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_changes(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {json.dumps(a)[:60]} -> {json.dumps(b)[:60]}")
    return out


def targeted_layer(name: str) -> str | None:
    """The targeted linear layer a trainable parameter belongs to (its weight, or an adapter's A/B/experts
    hung under it), named as in the plain backbone; None for embeddings, norms and the head."""
    parts = name.split(".")
    hits = [i for i, part in enumerate(parts) if part in DEFAULT_TARGETS]
    if not hits:
        return None
    parts = parts[:hits[-1] + 1]
    if parts[:2] == ["base_model", "model"]:  # peft's wrapper prefix
        parts = parts[2:]
    return ".".join(parts)


def layer_cosines(tg: TaskGradients, layers: list[str | None]) -> dict[str, float]:
    """Cosine between the search and rec gradients of each targeted layer (all its trainable tensors
    together); layers whose gradient is zero for a task are left out."""
    sums: dict[str, list[float]] = {}
    for layer, r, s in zip(layers, tg.rec, tg.search):
        if layer is None or r is None or s is None:
            continue
        acc = sums.setdefault(layer, [0.0, 0.0, 0.0])
        r, s = r.reshape(-1).float(), s.reshape(-1).float()
        acc[0] += float(torch.dot(r, s))
        acc[1] += float(torch.dot(r, r))
        acc[2] += float(torch.dot(s, s))
    return {layer: round(dot / math.sqrt(nr * ns), 6) for layer, (dot, nr, ns) in sums.items() if nr > 0 and ns > 0}


def task_cosine(tg: TaskGradients) -> float:
    """Cosine between the search and rec gradients of all trainable parameters together (float32 dot products
    per tensor, summed in Python floats)."""
    pairs = [(r.reshape(-1).float(), s.reshape(-1).float()) for r, s in zip(tg.rec, tg.search)]
    dot = sum(float(torch.dot(r, s)) for r, s in pairs)
    nr = math.sqrt(sum(float(torch.dot(r, r)) for r, _ in pairs))
    ns = math.sqrt(sum(float(torch.dot(s, s)) for _, s in pairs))
    return dot / (nr * ns) if nr > 0 and ns > 0 else 0.0


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds: its state, nested ones included (GEMS and GaLore keep each
    subspace's basis and moments in a dict of their own), and what it keeps outside ``state``
    (``held_tensors()``: GEMS's null projectors and cached projection operands). Each storage counts once."""
    seen: dict[tuple, int] = {}

    def visit(value) -> None:
        if torch.is_tensor(value):
            storage = value.untyped_storage()
            seen[(value.device.type, storage.data_ptr())] = storage.nbytes()
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(list(opt.state.values()))
    if hasattr(opt, "held_tensors"):
        visit(opt.held_tensors())
    return sum(seen.values())


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


#: glibc mallopt parameters (malloc.h); trimming off (-1: "disables trimming completely", mallopt(3)); tensors
#: below 1 GiB from the heap, not from mmap
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _TRIM_NEVER, _MMAP_FROM = -1, -3, -1, 2 ** 30


@functools.cache
def keep_freed_host_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of returning it to the OS: never trim the heap,
    and serve tensors below 1 GiB from it rather than from fresh mmaps. A training step frees its activations and
    gradients and allocates them again in the next micro-batch; whatever glibc hands back to the kernel in between
    comes back as one page fault per 4 KiB page, taken by every thread on one lock. A finite trim threshold is not
    enough: once a micro-batch's activations exceed it, the heap's top is trimmed and faulted in again every step
    (the paper-batch profiles in benchmarks/README.md show what that costs). The peak is unchanged because the
    memory is reused, not added; between steps the process keeps its peak resident, as a GPU caching allocator
    does. Applied once per process, for every method alike; a no-op (False) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER)) and bool(libc.mallopt(_M_MMAP_THRESHOLD,
                                                                                     _MMAP_FROM))
    except (OSError, AttributeError):
        return False


def train_llm(method: LLMMethod, ctx: RunContext) -> dict:
    """Train one run; under ``torchrun`` every process calls this and takes its shard of each global batch
    (:mod:`gemsbench.distributed`). Every process returns the same summary, rank 0's timings aside."""
    keep_freed_host_memory()
    with joined(resolve_device(ctx.device)):
        return Loop(method, ctx).run()


class LLMScorer:
    """Scores all items with a fine-tuned backbone (item-token logits at the first generated position)."""

    def __init__(self, built: Built, method: LLMMethod, device: str, batch_tokens: int):
        self.b, self.method, self.device, self.batch_tokens = built, method, device, batch_tokens
        self.precision = built.precision
        self.b.model.eval()

    @torch.no_grad()
    def score(self, examples: pd.DataFrame) -> torch.Tensor:
        out = torch.empty((len(examples), len(self.b.item_ids)))
        for positions, batch in self.b.encoder.eval_batches(examples, self.batch_tokens):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            self.method.before_forward(self.b.model, batch)
            with autocast(self.device, self.precision):
                scores = score_items(self.b.model, batch, self.b.item_ids, self.b.is_encoder_decoder)
            out[positions] = scores.float().cpu()
        return out


def load_llm_scorer(method: LLMMethod, ctx: RunContext) -> LLMScorer:
    keep_freed_host_memory()  # scoring batches allocate and free alike
    settings = TrainSettings.from_dict(ctx.train)
    built = build(method, ctx, settings)
    best = Path(ctx.run_dir) / "checkpoint" / "best.pt"
    if not best.exists():
        raise TrainingError(f"no trained model at {best}; run the train step for this run first")
    state = torch_load(best, RETRAIN.format(run_dir=ctx.run_dir), map_location=resolve_device(ctx.device))
    load_trainable_state(built.model, state)
    method.prepare_inference(built.model)
    return LLMScorer(built, method, resolve_device(ctx.device), settings.batch_tokens)
