"""Peak memory of a full-vocabulary loss over labelled positions: the output head in one call vs in slices.

A training pass with ``loss_vocab: full`` puts its labelled positions through the output head. In one call,
their logits over the whole vocabulary — and as much again for their gradient and the softmax kept for the
backward pass — are held at once: with Gemma-3's 262,144-token vocabulary that is 1 MiB per labelled position
each. :func:`gemsbench.modeling.head_map` cuts them into checkpointed slices of at most ``HEAD_LOGITS`` logits.
This script measures one forward and backward pass of that loss for both ways, each in a fresh process (peak
RSS on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU), above the memory the head and its inputs hold
already, and checks that both give the same loss and gradient norm::

    python benchmarks/bench_head_memory.py                      # vocabulary 262,144, hidden 640, 1,536 positions
    python benchmarks/bench_head_memory.py --frozen-head        # the head's weight not trained (LoRA-type methods)
    python benchmarks/bench_head_memory.py --positions 4096 --device cuda

Writes ``benchmarks/results/bench_head_memory.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gemsbench import modeling  # noqa: E402
from gemsbench.atomic import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results"


class HeadOnly(nn.Module):
    """Just an output head, as :mod:`gemsbench.modeling` reaches it (``get_output_embeddings``)."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.head = nn.Linear(hidden, vocab, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def measure(args: argparse.Namespace, sliced: bool, queue) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = HeadOnly(args.hidden, args.vocab).to(args.device)
    hidden = torch.randn(args.positions, args.hidden, device=args.device, requires_grad=True)
    target = torch.randint(0, args.vocab, (args.positions,), device=args.device)
    if not sliced:
        modeling.HEAD_LOGITS = args.positions * args.vocab  # one call over every position
    model.head.weight.requires_grad_(not args.frozen_head)
    if not args.frozen_head:
        model.head.weight.grad = torch.zeros_like(model.head.weight)  # the gradient buffer both ways need
    hidden.grad = torch.zeros_like(hidden)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    calls = []
    head_forward = modeling.vocab_logits
    modeling.vocab_logits = lambda m, h: calls.append(len(h)) or head_forward(m, h)
    before = peak_bytes(args.device)
    start = time.perf_counter()
    loss = modeling.head_map(model, hidden, lambda logits, t: F.cross_entropy(logits, t, reduction="none"),
                             target).sum()
    loss.backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    queue.put({"sliced": sliced, "largest_call": max(calls), "calls": len(calls),
               "peak_above_inputs_bytes": peak_bytes(args.device) - before, "seconds": time.perf_counter() - start,
               "loss": float(loss.detach()), "grad_norm": float(hidden.grad.norm())})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=262_144, help="vocabulary rows (Gemma-3: 262,144)")
    p.add_argument("--hidden", type=int, default=640, help="hidden size (Gemma-3 270M: 640)")
    p.add_argument("--positions", type=int, default=1536, help="labelled positions in the pass")
    p.add_argument("--frozen-head", action="store_true", help="the head's weight gets no gradient")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for sliced in (False, True):
        queue = ctx.Queue()
        worker = ctx.Process(target=measure, args=(args, sliced, queue))
        worker.start()
        rows.append(queue.get())
        worker.join()
    plain, sliced = rows
    if abs(plain["loss"] - sliced["loss"]) > 1e-4 * abs(plain["loss"]) or \
            abs(plain["grad_norm"] - sliced["grad_norm"]) > 1e-4 * plain["grad_norm"]:
        raise SystemExit(f"the two ways disagree: {plain} vs {sliced}")
    mib = 2 ** 20
    head = "frozen head" if args.frozen_head else "trained head"
    lines = [f"Full-vocabulary loss over {args.positions} labelled positions, vocabulary {args.vocab:,}, hidden "
             f"{args.hidden}, {head}, {args.device}: memory of one forward and backward pass above the head and its "
             "inputs (same loss and gradient both ways)", "",
             "| output head | head calls (forward + backward) | most positions in one | peak memory (MiB) | seconds |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {'head_map (the suite)' if row['sliced'] else 'one call'} | {row['calls']} | "
                     f"{row['largest_call']} | {row['peak_above_inputs_bytes'] / mib:.0f} | {row['seconds']:.1f} |")
    ratio = plain["peak_above_inputs_bytes"] / max(1, sliced["peak_above_inputs_bytes"])
    lines += ["", f"Ratio one call / slices: {ratio:.1f}x"]
    RESULTS.mkdir(exist_ok=True)
    stem = "bench_head_memory_frozen" if args.frozen_head else "bench_head_memory"
    atomic_write_json({"settings": vars(args), "rows": rows}, RESULTS / f"{stem}.json")
    atomic_write_text("\n".join(lines) + "\n", RESULTS / f"{stem}.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
