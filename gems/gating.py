"""Gates (g_rec, g_src), g_rec + g_src = 1, that weight the two task-specific updates in the fusion.

Modes:

* ``heuristic`` (the release's default): each task gets the same mix of three shares, and the task with the
  larger loss, the larger gradient norm and the more samples gets the larger gate::

      g_rec = (w_loss·L_rec/(L_rec+L_src) + w_grad·‖∇_rec‖/(‖∇_rec‖+‖∇_src‖) + w_count·n_rec/(n_rec+n_src))
              / (w_loss + w_grad + w_count),        g_src = 1 − g_rec,

  with (w_loss, w_grad, w_count) = (0.4, 0.4, 0.2). A share whose two values are not finite or sum to 0 is
  0.5 (uninformative) rather than an error, so a diverging step cannot crash the gate.
* ``fixed``: g_rec = ``rec_weight``, g_src = 1 − ``rec_weight``.

In every mode a task with no example in the step (count 0) gets gate 0 and the other task gets 1.

``learnable`` is refused: the release's gating MLP never trains (its loss is a Python float) and the paper
states no objective for it, so any objective chosen here would be a new method, not a reproduction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

GATE_MODES = ("heuristic", "fixed")


@dataclass(frozen=True)
class GateConfig:
    """How the optimizer turns per-step task signals into gates."""

    mode: str = "heuristic"
    rec_weight: float = 0.5  # ``fixed`` mode only
    mix: tuple[float, float, float] = (0.4, 0.4, 0.2)  # ``heuristic``: loss, gradient-norm, sample-count

    def __post_init__(self) -> None:
        if self.mode == "learnable":
            raise ValueError("gate mode 'learnable' is not offered: the release's gating network never trains "
                             "and the paper gives it no objective; use 'heuristic' (release default) or 'fixed'")
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate mode {self.mode!r} is unknown; use one of {GATE_MODES}")
        if not 0.0 <= self.rec_weight <= 1.0:
            raise ValueError(f"rec_weight={self.rec_weight} must lie in [0, 1]")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix={self.mix} must be three non-negative weights (loss, grad-norm, count) "
                             "with a positive sum")


@dataclass(frozen=True)
class TaskSignals:
    """What one step knows about each task: target count, token-mean loss, global gradient norm."""

    n_rec: int
    n_search: int
    loss_rec: float
    loss_search: float
    grad_norm_rec: float
    grad_norm_search: float


def _share(a: float, b: float) -> float:
    """a's share of a + b; 0.5 when the pair carries no usable information."""
    total = a + b
    if not math.isfinite(total) or total <= 0:
        return 0.5
    return a / total


def compute_gates(config: GateConfig, signals: TaskSignals) -> tuple[float, float]:
    """Return (g_rec, g_src) for one step."""
    rec_present, search_present = signals.n_rec > 0, signals.n_search > 0
    if not (rec_present or search_present):
        raise ValueError("both task counts are 0 (n_rec=0, n_search=0): a step needs at least one example")
    if not (rec_present and search_present):
        return (1.0, 0.0) if rec_present else (0.0, 1.0)
    if config.mode == "fixed":
        return config.rec_weight, 1.0 - config.rec_weight
    w_loss, w_grad, w_count = config.mix
    g_rec = (w_loss * _share(signals.loss_rec, signals.loss_search)
             + w_grad * _share(signals.grad_norm_rec, signals.grad_norm_search)
             + w_count * _share(signals.n_rec, signals.n_search)) / (w_loss + w_grad + w_count)
    return g_rec, 1.0 - g_rec
