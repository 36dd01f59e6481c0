"""Where a training step's time goes: forward, backward passes, clipping, optimizer phases, per steady step.

Companion to ``bench_gems.py`` (which times whole steps): one variant, one format, in this process, with the
harness's phases wrapped in timers — the loop's forward (``Loop.losses``), the backward passes
(``TaskSplit.backward``/``backward_task`` for per-task gradients, with the row split's weight products inside
them, ``Loop.joint_backward`` for one joint pass), clipping, and the
optimizer (``torch.optim.AdamW.step``; for the subspace methods ``set_task_gradients`` and, inside
``MultiSubspaceAdamW.step``, the targeted weights' subspace parts, the fused update, the plain-AdamW rest).
Each timer's total over the steps from ``--warmup`` on is divided by their number. The wrappers add a few
microseconds per call; the phases of one run, not two runs, are what to compare. Beside each phase's wall time
the profile prints the process's minor page faults and kernel (system) CPU seconds inside it: a phase whose
memory is handed back to the kernel and faulted in again on every step shows there.

    python benchmarks/profile_step.py --variant gems --format timeline      # ~1.5 min on 2 CPU cores
    python benchmarks/profile_step.py --variant full_ft --format prompt --batch paper

Uses the same set-up as ``bench_gems.py`` (config/reference.yaml's train settings, the embedded data, no
gradient-conflict measurement, ``update_gap`` 1000 so that no refresh falls inside the measured steps).
"""
from __future__ import annotations

import argparse
import collections
import importlib
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gems  # noqa: E402  (the benchmark's set-up: config, data, backbone, variants)

PHASES = {  # (module, class, method) -> phase label
    ("gemsbench.train", "Loop", "losses"): "forward",
    ("gems.task_split", "TaskSplit", "backward"): "backward pass(es) of both tasks (TaskSplit.backward)",
    ("gems.task_split", "TaskSplit", "backward_task"): "backward pass of one task subset",
    ("gems.task_split", "TaskSplit", "_split_rows"): "  of which: row-split weight-gradient products",
    ("gems.task_split", "TaskSplit", "finish"): "joint gradient from the task gradients",
    ("gemsbench.train", "Loop", "joint_backward"): "forward + joint backward",
    ("gemsbench.train", "Loop", "task_backward"): "forward + task backward passes + joint gradient",
    ("gemsbench.train", "Loop", "clip"): "clip (and scale task gradients)",
    ("torch.optim", "AdamW", "step"): "optimizer: AdamW",
    ("gems.optimizer", "MultiSubspaceAdamW", "set_task_gradients"): "optimizer: task gradients + gates",
    ("gems.optimizer", "MultiSubspaceAdamW", "_subspace_part"): "optimizer: subspace projections + Adam",
    ("gems.optimizer", "MultiSubspaceAdamW", "_apply_update"): "optimizer: fused update into W",
    ("gems.optimizer", "MultiSubspaceAdamW", "_step_dense"): "optimizer: plain AdamW (non-targeted)",
    ("gems.optimizer", "MultiSubspaceAdamW", "step"): "optimizer: MultiSubspaceAdamW total",
}


def usage() -> tuple[float, float, float]:
    """(wall seconds, minor page faults, kernel CPU seconds) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), float(r.ru_minflt), r.ru_stime


def instrument(totals: dict[str, list[float]], snapshots: list[dict[str, list[float]]]) -> None:
    """Wrap every phase in a meter of :func:`usage`; snapshot the running totals after each optimizer step."""
    for (module, cls_name, name), label in PHASES.items():
        cls = getattr(importlib.import_module(module), cls_name)
        raw = next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)  # AdamW inherits its step
        is_static = isinstance(raw, staticmethod)
        func = raw.__func__ if is_static else raw
        is_step = name == "step"

        def timed(*args, _func=func, _label=label, _is_step=is_step, **kwargs):
            start = usage()
            try:
                return _func(*args, **kwargs)
            finally:
                total = totals[_label]
                for k, (now, then) in enumerate(zip(usage(), start)):
                    total[k] += now - then
                if _is_step:
                    snapshots.append({label: list(v) for label, v in totals.items()})

        setattr(cls, name, staticmethod(timed) if is_static else timed)


def main(args) -> None:
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    snapshots: list[dict[str, list[float]]] = []
    instrument(totals, snapshots)
    args.cache_root.mkdir(parents=True, exist_ok=True)
    data = bench_gems.dataset_dir(args.cache_root)
    with tempfile.TemporaryDirectory(dir=args.cache_root) as run_dir:
        # update_gap 1000: no basis refresh among the measured steps
        method, ctx, _ = bench_gems.build_run(args.variant, args.format, args.steps, 1000, data, args.cache_root,
                                              run_dir, batch=bench_gems.BATCHES[args.batch])
        method.fit(ctx)
        log = bench_gems.read_log(run_dir)
    if len(snapshots) != len(log) or len(log) <= args.warmup:
        sys.exit(f"{len(log)} steps, {len(snapshots)} optimizer steps: need more than --warmup {args.warmup}")
    # snapshot i is taken at the end of step i's optimizer step: phases of steps warmup.. = last − snapshot[w-1]
    first = snapshots[args.warmup - 1] if args.warmup else {}
    n = len(log) - args.warmup
    seconds = [e["seconds"] for e in log]
    print(f"{args.variant} · {args.format} · batch {args.batch} · step seconds {[round(s, 2) for s in seconds]}")
    print(f"mean of steps {args.warmup}..{len(log) - 1}: {sum(seconds[args.warmup:]) / n:.3f} s/step")
    print(f"  {'phase':48s} {'s/step':>7s} {'faults/step':>12s} {'kernel s/step':>13s}")
    for label in PHASES.values():
        if label in totals:
            last, before = snapshots[-1].get(label, [0.0] * 3), first.get(label, [0.0] * 3)
            wall, faults, kernel = ((a - b) / n for a, b in zip(last, before))
            print(f"  {label:48s} {wall:7.3f} {faults:12,.0f} {kernel:13.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="gems", choices=list(bench_gems.VARIANTS))
    p.add_argument("--format", default="timeline", choices=["prompt", "timeline"])
    p.add_argument("--batch", default="config", choices=list(bench_gems.BATCHES),
                   help="the config's batch or the paper's effective batch (32 x 4)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the means (allocator warm-up)")
    p.add_argument("--cache-root", type=Path, default=bench_gems.ROOT / "cache")
    main(p.parse_args())
