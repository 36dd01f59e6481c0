"""The one small interface every method implements, so the harness never branches on a method's name.

Two families share it:

* :class:`Method` — anything that learns from the prepared examples and then scores items (popularity,
  shared-encoder models). ``fit`` trains and saves into the run directory; ``load_scorer`` rebuilds a
  :class:`Scorer` from what ``fit`` saved.
* :class:`LLMMethod` — fine-tunes the language-model backbone inside the shared training loop
  (:mod:`gemsbench.train`). A subclass says how to wrap the model (adapters, freezing), which optimizer
  to build, and how to take a step; the loop does batching, autocast, accumulation, per-task gradients,
  logging, checkpoints and model selection.

The interface does not import the loop that calls it: the run context carries it (``RunContext.loop``, set by
the one builder of run contexts, :func:`gemsbench.cli.common.build_run`), so the loop may import this module and
never the reverse. A method declares its config name with ``@register_method("name")``; the registry
(:mod:`gemsbench.methods.registry`) finds every method module by itself.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import pandas as pd
import torch
from torch import nn

from ..data.prepared import PreparedDataset
from .hparams import HParam, HParamError


class Scorer(Protocol):
    """Scores every item of the catalogue for a batch of examples (higher = ranked earlier)."""

    def score(self, examples: pd.DataFrame) -> torch.Tensor:
        """Return a float32 tensor [len(examples), n_items] on the CPU."""


class Loop(Protocol):
    """The shared training loop of LLM methods (:mod:`gemsbench.train` is one)."""

    def train_llm(self, method: "LLMMethod", ctx: "RunContext") -> dict: ...

    def load_llm_scorer(self, method: "LLMMethod", ctx: "RunContext") -> Scorer: ...


@dataclass
class RunContext:
    """Everything a method needs to train one run."""

    dataset: PreparedDataset
    run_dir: Path
    seed: int
    hparams: dict  # the method's hyper-parameters (the builder puts the checked ones, defaults applied, here)
    train: dict  # the training section of the config (format, steps, batch size, lr, ...)
    backbone: dict = field(default_factory=dict)  # the backbone section (name, source, cache dir, ...)
    device: str = "cpu"
    loop: Loop | None = None  # the training loop LLM methods train in (gemsbench.train); others need none


_METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: the method is called ``name`` in configs (``methods.<run>.method``)."""
    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def registered_methods() -> dict[str, type["Method"]]:
    """Name -> class of every method registered so far (gemsbench.methods.registry imports them all first)."""
    return dict(_METHODS)


class Method(ABC):
    """A method: ``fit`` on a run context, then ``load_scorer`` for evaluation."""

    name: ClassVar[str]
    #: defaults of this method's hyper-parameters; keys outside it are rejected at construction
    defaults: ClassVar[dict[str, Any]] = {}
    #: the type and range of each hyper-parameter (one per key of ``defaults``; see gemsbench.methods.hparams)
    hparam_types: ClassVar[dict[str, HParam]] = {}

    def __init__(self, hparams: dict | None = None):
        self.hparams = self.checked_hparams(dict(hparams or {}))

    @classmethod
    def checked_hparams(cls, hparams: dict) -> dict:
        """The defaults overlaid with ``hparams``, every value checked against its declared type and range;
        an unknown key or a bad value is an :class:`HParamError` naming the key."""
        undeclared = set(cls.defaults) - set(cls.hparam_types)
        if undeclared:
            raise TypeError(f"method {cls.name!r} declares no type for hyper-parameter(s) {sorted(undeclared)}: "
                            "add them to its hparam_types")
        unknown = sorted(set(hparams) - set(cls.defaults))
        if unknown:
            raise HParamError(unknown[0], f"method {cls.name!r}: unknown hyper-parameter(s) {unknown}; "
                                          f"known: {sorted(cls.defaults)}")
        merged = {**cls.defaults, **hparams}
        for key, value in merged.items():
            try:
                cls.hparam_types[key].check(key, value)
            except HParamError as e:
                raise HParamError(key, f"hyper-parameter {key!r} of method {cls.name!r} {e}") from None
        return merged

    @abstractmethod
    def fit(self, ctx: RunContext) -> dict:
        """Train, save what ``load_scorer`` needs under ``ctx.run_dir``, return a summary dict."""

    @abstractmethod
    def load_scorer(self, ctx: RunContext) -> Scorer:
        """Rebuild the trained scorer from ``ctx.run_dir``."""


@dataclass
class TaskGradients:
    """Per-task gradients of the trainable parameters for one optimizer step.

    ``rec[i]``/``search[i]`` is the gradient of the token-mean loss of that task alone with respect to
    ``params[i]`` (None when the task had no target in the step). The joint gradient — that of the token-mean
    loss over both tasks — equals ``(n_rec * rec + n_search * search) / (n_rec + n_search)`` and is what the
    loop leaves in ``p.grad``.
    """

    params: list[nn.Parameter]
    rec: list[torch.Tensor | None]
    search: list[torch.Tensor | None]
    n_rec: int
    n_search: int
    loss_rec: float
    loss_search: float


class LLMMethod(Method):
    """A method that fine-tunes the backbone in the shared loop."""

    #: True when ``optimizer_step`` needs the per-task gradients (the loop's ``task_backward``: one backward pass
    #: per micro-batch in the prompt format, rows split by task; one per task in the timeline format)
    uses_task_gradients: ClassVar[bool] = False
    #: set by the training loop before each step: True on the steps where it logs gradient conflict
    conflict_step: bool = False

    @abstractmethod
    def prepare_model(self, model: nn.Module, item_token_ids: list[int]) -> nn.Module:
        """Wrap/freeze the backbone (with item tokens already added); return the model to train."""

    @abstractmethod
    def build_optimizer(self, model: nn.Module, total_steps: int) -> torch.optim.Optimizer:
        """The optimizer over the model's trainable parameters; the loop adds the learning-rate schedule."""

    def item_rows(self, model: nn.Module, item_token_ids: list[int]) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        """The trainable tensors that hold the item tokens' rows: ``(param, row indices)`` for a whole
        vocabulary matrix, ``(param, None)`` for a tensor of item rows only (``train.item_lr_scale`` scales
        their updates). Default: the input embedding and an untied output head, where trainable."""
        matrices = [model.get_input_embeddings().weight]
        head = model.get_output_embeddings()
        if head is not None and head.weight is not matrices[0]:
            matrices.append(head.weight)
        rows = torch.tensor(item_token_ids, dtype=torch.long, device=matrices[0].device)
        return [(w, rows) for w in matrices if w.requires_grad]

    def joint_from_task_gradients(self, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
        """The parameters whose joint gradient the optimizer derives itself from the task gradients: on steps
        with task gradients the loop leaves their ``p.grad`` None (a full-size copy of each saved) and clips
        what the optimizer will derive. Default: none."""
        return []

    def before_forward(self, model: nn.Module, batch: dict) -> None:
        """Hook run before every forward pass (e.g. to route task ids to experts). Default: nothing."""

    def prepare_inference(self, model: nn.Module) -> None:
        """Called once on the model with its trained weights loaded, before it only scores (evaluation,
        knowledge retention); never before training. A method may make inference cheaper here without
        changing what the model computes (LoRA merges its adapters). Default: nothing."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, task_grads: TaskGradients | None) -> dict:
        """Take one step; ``p.grad`` holds the joint gradient. Return values to log (may be empty)."""
        optimizer.step()
        return {}

    def fit(self, ctx: RunContext) -> dict:
        return _loop(self, ctx).train_llm(self, ctx)

    def load_scorer(self, ctx: RunContext) -> Scorer:
        return _loop(self, ctx).load_llm_scorer(self, ctx)


def _loop(method: LLMMethod, ctx: RunContext) -> Loop:
    if ctx.loop is None:
        raise TypeError(f"method {method.name!r} trains in the shared loop, but its run context has none: build the "
                        "context with gemsbench.cli.common.build_run (or pass loop=gemsbench.train)")
    return ctx.loop
