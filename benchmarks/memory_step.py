"""Where a training step's memory goes: resident memory per phase and the bytes each holder keeps alive.

Companion to ``bench_gems.py`` (which reports one peak per variant) and ``profile_step.py`` (time per phase):
one variant, one format, in this process, with the harness's phases wrapped — the forward pass
(``Loop.losses``), the backward passes (``TaskSplit.backward``/``backward_task``, or the joint backward of
``Loop.joint_backward``), the joint gradient (``TaskSplit.finish``), clipping, the optimizer step and
``zero_grad``. A sampling thread reads the process's resident set (``/proc/self/statm``) every few
milliseconds and keeps each phase's peak, so a peak is attributed to the phase it happens in. At the end of
every phase the bytes of the live tensors are counted by holder (each storage once, in the first holder that
has it): weights, ``.grad`` fields, optimizer state (subspace bases and moments, dense AdamW moments), null
projectors and the optimizer's cached operands, the TaskSplit's task-gradient accumulators, the task
gradients handed to the optimizer, the autograd graph's saved tensors of one forward pass (counted through
``saved_tensors_hooks`` that return the tensor unchanged; weights left out), and every other
tensor reachable from Python. glibc's ``mallinfo2`` adds the allocator's view: bytes in use, bytes free
inside its arenas (kept for reuse, still resident), bytes in mmapped chunks.

    python benchmarks/memory_step.py --variant gems --format prompt --batch paper --steps 2
    python benchmarks/memory_step.py --variant full_ft --format timeline --batch paper --steps 2
    python benchmarks/memory_step.py --variant gems --glibc-defaults   # without the loop's allocator setting

Uses ``bench_gems.build_run`` (config/reference.yaml's train settings, the embedded data, no conflict
measurement). Writes nothing; prints one table per step.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gems  # noqa: E402  (the benchmark's set-up: config, data, backbone, variants)

PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 2 ** 30
PHASES = {  # (module, class, method) -> phase label
    ("gemsbench.train", "Loop", "losses"): "forward",
    ("gemsbench.train", "Loop", "joint_backward"): "backward",
    ("gems.task_split", "TaskSplit", "backward"): "backward",
    ("gems.task_split", "TaskSplit", "backward_task"): "backward",
    ("gems.task_split", "TaskSplit", "finish"): "joint gradient (finish)",
    ("gemsbench.train", "Loop", "clip"): "clip",
    ("gemsbench.train", "Loop", "validate"): "validate",
}
OPTIMIZER_PHASES = ("step", "zero_grad")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo() -> dict[str, int] | None:
    """glibc's allocator counters (None elsewhere): in use, free inside the arenas, mmapped."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "arena_free": info.fordblks, "mmapped": info.hblkhd}


class Tracker:
    """Phase stack, per-phase peak RSS from a sampling thread, and per-holder tensor bytes at phase ends."""

    def __init__(self, interval: float):
        self.stack: list[str] = ["setup"]
        self.step = 0
        self.peaks: dict[tuple[int, str], int] = {}  # (step, phase) -> peak RSS
        self.in_use_peaks: dict[tuple[int, str], int] = {}  # (step, phase) -> peak bytes malloc has handed out
        self.rows: list[dict] = []
        self.loop = None
        self.saved: dict[int, int] = {}  # storage pointer -> bytes, of the current forward's saved tensors
        self.saved_peak = 0
        self.weights: set[int] | None = None  # storages of the parameters (saved too, but not activations)
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            key = (self.step, self.stack[-1])
            value = rss()
            if value > self.peaks.get(key, 0):
                self.peaks[key] = value
            info = mallinfo()
            if info and info["in_use"] > self.in_use_peaks.get(key, 0):
                self.in_use_peaks[key] = info["in_use"]
            time.sleep(self.interval)

    @contextlib.contextmanager
    def phase(self, label: str):
        self.stack.append(label)
        try:
            yield
        finally:
            self.stack.pop()
            self.rows.append({"step": self.step, "phase": label, "rss": rss(),
                              "peak": self.peaks.get((self.step, label), 0),
                              "peak in use": self.in_use_peaks.get((self.step, label), 0), **self.holders()})

    # --- holders ------------------------------------------------------------------------------------
    def holders(self) -> dict[str, int]:
        seen: set[int] = set()

        def size(tensors) -> int:
            total = 0
            for t in tensors:
                if not torch.is_tensor(t) or t.device.type != "cpu":
                    continue
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr in seen or ptr == 0:
                    continue
                seen.add(ptr)
                total += storage.nbytes()
            return total

        loop = self.loop
        out: dict[str, int] = {}
        if loop is None:
            return out
        params = loop.params
        opt = loop.optimizer
        out["weights"] = size(params)
        out["grad"] = size(p.grad for p in params)
        dense, sub = [], []
        for st in opt.state.values():
            for key, value in st.items():
                if isinstance(value, dict):
                    sub += [v for v in value.values() if torch.is_tensor(v)]
                elif torch.is_tensor(value):
                    dense.append(value)
        out["adam moments (dense)"] = size(dense)
        out["subspace bases + moments"] = size(sub)
        null = getattr(opt, "_null", {})
        out["null projectors + cached operands"] = size(
            [pr.basis if hasattr(pr, "basis") else getattr(pr, "matrix", None) for pr, _ in null.values()]
            + [c[3] for c in getattr(opt, "_operand_cache", {}).values()]
            + [getattr(c[2], "basis", None) for c in getattr(opt, "_projector_cache", {}).values()])
        split = getattr(loop, "_task_split", None)
        out["task-gradient accumulators"] = size([g for task in split.grads for g in task]) if split else 0
        task_step = getattr(opt, "_task_step", None)
        out["task gradients given to the optimizer"] = size(
            [g for grads in task_step.grads.values() for g in grads.values()]) if task_step else 0
        tensors = [o for o in gc.get_objects() if torch.is_tensor(o)]
        out["other Python-held tensors"] = size(tensors)
        out["autograd saved (forward, peak)"] = self.saved_peak
        info = mallinfo()
        if info:
            out.update({f"malloc {k}": v for k, v in info.items()})
        return out

    # --- autograd saved tensors -------------------------------------------------------------------
    def pack(self, t: torch.Tensor):
        if t.device.type == "cpu" and self.loop is not None:
            if self.weights is None:
                self.weights = {p.untyped_storage().data_ptr() for p in self.loop.params}
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.weights:
                self.saved.setdefault(storage.data_ptr(), storage.nbytes())
            self.saved_peak = max(self.saved_peak, sum(self.saved.values()))
        return t


def instrument(tracker: Tracker) -> None:
    for (module, cls_name, name), label in PHASES.items():
        cls = getattr(importlib.import_module(module), cls_name)
        func = cls.__dict__[name]

        def wrapped(*args, _func=func, _label=label, **kwargs):
            if _label == "forward":
                tracker.saved.clear()  # the saved-tensor count is per forward pass (storages get reused)
            with tracker.phase(_label):
                return _func(*args, **kwargs)
        setattr(cls, name, wrapped)

    import gemsbench.train as train
    init = train.Loop.__init__

    def loop_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        tracker.loop = self
        opt = self.optimizer
        for name in OPTIMIZER_PHASES:  # this optimizer instance's step and zero_grad
            bound = getattr(opt, name)

            def wrapped(*a, _bound=bound, _name=name, **kw):
                with tracker.phase(f"optimizer {_name}"):
                    result = _bound(*a, **kw)
                if _name == "zero_grad":
                    tracker.step += 1
                    tracker.saved_peak = 0
                return result
            setattr(opt, name, wrapped)
    train.Loop.__init__ = loop_init


def main(args) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    tracker = Tracker(args.interval)
    instrument(tracker)
    args.cache_root.mkdir(parents=True, exist_ok=True)
    data = bench_gems.dataset_dir(args.cache_root)
    tracker.thread.start()
    with tempfile.TemporaryDirectory(dir=args.cache_root) as run_dir, \
            torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t):
        method, ctx, _ = bench_gems.build_run(args.variant, args.format, args.steps, args.gap, data,
                                              args.cache_root, run_dir, batch=bench_gems.BATCHES[args.batch])
        import gemsbench.train
        if args.glibc_defaults:  # glibc's own thresholds: freed large chunks go back to the OS
            gemsbench.train.keep_freed_host_memory = lambda: False
        else:
            gemsbench.train.keep_freed_host_memory()  # as train_llm does
        method.fit(ctx)
    tracker._stop.set()
    peak = max(tracker.peaks.values())
    in_use = max(tracker.in_use_peaks.values(), default=0)
    print(f"{args.variant} · {args.format} · batch {args.batch} · peak RSS {peak / GIB:.2f} GiB "
          f"(step, phase {max(tracker.peaks, key=tracker.peaks.get)}), peak malloc in use {in_use / GIB:.2f} GiB "
          f"(step, phase {max(tracker.in_use_peaks, key=tracker.in_use_peaks.get, default=None)}), "
          f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    keys = [k for k in tracker.rows[-1] if k not in ("step", "phase")]
    for step in sorted({r["step"] for r in tracker.rows}):
        rows = [r for r in tracker.rows if r["step"] == step]
        merged: dict[str, dict] = {}
        for r in rows:  # per phase: the highest peaks, the state at its last end
            m = merged.setdefault(r["phase"], dict(r))
            m.update({k: v for k, v in r.items() if not k.startswith("peak")})
            m["peak"] = max(m["peak"], r["peak"])
            m["peak in use"] = max(m["peak in use"], r["peak in use"])
        print(f"\nstep {step} (GiB; holders at the phase's last end)")
        print("| phase | peak RSS | peak malloc in use | RSS at end | " + " | ".join(keys[3:]) + " |")
        print("|---|" + "---|" * (len(keys) + 1))
        for label, r in merged.items():
            print(f"| {label} | {r['peak'] / GIB:.2f} | {r['peak in use'] / GIB:.2f} | {r['rss'] / GIB:.2f} | "
                  + " | ".join(f"{r.get(k, 0) / GIB:.3f}" for k in keys[3:]) + " |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="gems", choices=list(bench_gems.VARIANTS))
    p.add_argument("--format", default="prompt", choices=["prompt", "timeline"])
    p.add_argument("--batch", default="paper", choices=list(bench_gems.BATCHES))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--gap", type=int, default=4, help="update_gap of the subspace methods (step 0 refreshes)")
    p.add_argument("--interval", type=float, default=0.005, help="seconds between RSS samples")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--glibc-defaults", action="store_true",
                   help="leave glibc's trim and mmap thresholds alone (the loop raises both to keep freed memory)")
    p.add_argument("--cache-root", type=Path, default=bench_gems.ROOT / "cache")
    main(p.parse_args())
