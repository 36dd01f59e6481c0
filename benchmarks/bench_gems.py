"""Seconds per optimizer step of GEMS against full fine-tuning (AdamW) and LoRA, measured in one run.

On the embedded default (SmolLM2-135M from the packaged GGUF, MovieLens-100K), for the ``prompt`` and the
``timeline`` formats, every variant trains through the harness (``method.fit`` -> the shared ``Loop``) with the
default config's train settings, the same seed and therefore the same batches, for ``--steps`` steps, each in
a worker process of its own so its peak memory is its own (RSS on a CPU, CUDA max-allocated on a GPU). The
per-step seconds are the loop's own (``seconds`` in ``train_log.jsonl``: batching, forward, backward passes,
clipping and the optimizer step), with the gradient-conflict measurement of the DAG's runs switched off (it
adds a measurement-only backward pass to full fine-tuning and LoRA steps, and cosine products to GEMS's). From
them:

* ``first``: step 0 (lazy allocations, and GEMS's first SVDs) — reported, never averaged in;
* ``warm-up``: mean of steps 1 .. ``--warmup`` − 1, reported, never averaged in: on a CPU the first steps after
  step 0 still pay for fresh memory (each variant's 2nd and 3rd steps take 1.4–1.6× its later ones here);
* ``steady``: mean over the steps from ``--warmup`` on without an SVD refresh;
* ``refresh``: mean over later steps with one (the GEMS variants train with ``update_gap = --gap`` so that a
  short run has some), and ``amortised`` = steady + (refresh − steady) / G with G the method's configured gap;
* ``svd_share``: SVD seconds per refresh / G / amortised, for the exact and the randomized SVD.

Each format is measured at two batch settings (``--batches``): ``config`` (the config's ``batch_size`` and
``grad_accum``) and ``paper``, the paper's effective batch of 32 units × 4 accumulation steps. The projections
cost the same per step whatever the batch while the model's passes grow with it, so a ratio taken at a small
batch overstates what a user at the paper's batch pays.

Ratios are against full fine-tuning measured in the same invocation and batch setting: steady and amortised
step time, and peak memory — on a CPU both the peak RSS and the peak bytes in use (``InUseSampler``: RSS also
counts freed memory glibc keeps in its arenas, which depends on how the heap fragments). The output starts with
a GEMS / full FT summary per batch setting and format, and records the commit it measured. Targets from the
issue, at the paper's batch: GEMS within 1.15x of full fine-tuning per step in the prompt format, 1.75x in the
timeline format (whose floor is about 5/3: one forward and two backward passes against one and one), peak
memory within 1.0x. A shared machine makes single steps noisy: the load average at each worker's start and
end is recorded with its numbers.

    python benchmarks/bench_gems.py                        # both batch settings and formats (make bench, ~70 min)
    python benchmarks/bench_gems.py --steps 8 --formats prompt --variants full_ft gems --batches paper

Writes ``benchmarks/results/bench_gems.json`` and ``bench_gems.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this checkout's packages, not those of the checkout the environment was installed from (an editable install
# points at one checkout; a benchmark run from another worktree must measure its own code)
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "config" / "reference.yaml"  # 16 windows per step, as the published efficiency table
BACKBONE = {"source": "smollm2_gguf"}
#: variant -> (method, hyper-parameter overrides on top of the default config's entry)
VARIANTS = {
    "full_ft": ("full_ft", {}),
    "lora": ("lora", {}),
    "gems": ("gems", {}),  # the defaults: exact bases, projection products in bf16 under bf16 autocast
    "gems_rsvd": ("gems", {"svd": "randomized"}),
    "gems_fp32_rsvd": ("gems", {"svd": "randomized", "projection_dtype": "float32"}),
    "gems_no_nsp_rsvd": ("gems_no_nsp", {"svd": "randomized"}),  # what the null-space projection costs
}
#: what runs by default: the SVD and precision variants only in the prompt format (an SVD costs the same in
#: both formats; the gradients have the weights' shapes)
PLAN = {"prompt": list(VARIANTS), "timeline": ["full_ft", "lora", "gems", "gems_no_nsp_rsvd"]}
TARGETS = {"prompt": 1.15, "timeline": 1.75}
MEMORY_TARGET = 1.0
#: batch settings: name -> (batch_size, grad_accum), None = the config's own
BATCHES = {"config": None, "paper": (32, 4)}
#: at the paper's batch (8x the work per step) only the variants the targets are about: GEMS against full fine-tuning
#: (LoRA's cost relative to full FT is measured at the config batch, and by bench_throughput.py)
PAPER_PLAN = {"prompt": ["full_ft", "gems"], "timeline": ["full_ft", "gems"]}


def load_average() -> float:
    return os.getloadavg()[0]


def default_config() -> dict:
    from gemsbench.config import load_config
    return load_config(CONFIG)


def dataset_dir(cache_root: Path) -> Path:
    """The DAG's prepared MovieLens if present, else a private copy prepared once under the cache."""
    shared = ROOT / "results" / "default" / "data" / "ml100k"
    if (shared / "stats.json").exists():
        return shared
    private = cache_root / "bench" / "ml100k"
    if not (private / "stats.json").exists():
        from gemsbench.data.registry import get_preparer
        params = default_config()["datasets"]["ml100k"]["params"]
        get_preparer("movielens")(dict(params), private)
    return private


# --- one variant's training run (also used by profile_step.py) ------------------------------------------
def build_run(variant: str, fmt: str, steps: int, gap: int, data: Path, cache_root: Path, run_dir: Path,
              config_path: Path = CONFIG, variants: dict = VARIANTS, batch: tuple[int, int] | None = None):
    """(method, context, configured update_gap or None) for one variant: the config entry's hyper-parameters
    with the variant's overrides and ``update_gap = gap`` for the subspace methods; the config's train settings
    in format ``fmt`` for ``steps`` steps, one validation at the end and no gradient-conflict measurement (it
    is not the method's cost). ``batch`` = (units per pass group, accumulation steps) overrides the config's
    ``batch_size`` and ``grad_accum``."""
    from gemsbench.config import method_entry
    from gemsbench.data.prepared import load_prepared
    import gemsbench.train
    from gemsbench.methods.base import RunContext
    from gemsbench.methods.registry import build_method

    from gemsbench.config import load_config
    config = load_config(config_path)
    name, overrides = variants[variant]
    entry = method_entry(config, name)
    hparams = {**entry.get("hparams", {}), **overrides}
    method = build_method(entry["method"], hparams)
    configured_gap = method.hparams.get("update_gap")
    if configured_gap is not None:
        method = build_method(entry["method"], {**hparams, "update_gap": gap})
    train = {**config["train"], **entry.get("train", {}), "format": fmt, "max_steps": steps,
             "eval_every": steps, "val_examples": 8, "selection": "last", "checkpoint_every": 0,
             "conflict_every": 0}
    if batch is not None:
        train.update(batch_size=batch[0], grad_accum=batch[1])
    ctx = RunContext(load_prepared(Path(data)), Path(run_dir), seed=42, hparams=method.hparams, train=train,
                     backbone={**BACKBONE, "cache_root": str(cache_root)}, device=config["device"],
                     loop=gemsbench.train)
    return method, ctx, configured_gap


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "train_log.jsonl").read_text().splitlines()]


# --- worker: one variant, one format, in its own process ----------------------------------------------
#: seconds between the in-use samples: a peak lasts a pass (seconds); each mallinfo2 call walks the arenas' free
#: lists (~0.7 ms on a fragmented heap) beside the measured threads
IN_USE_INTERVAL = 0.05


class InUseSampler:
    """Peak bytes glibc's allocator has handed out and not taken back (``mallinfo2``), sampled every
    ``interval`` seconds in a thread. Peak RSS also counts memory freed into the allocator's arenas and kept
    there for reuse (the loop asks glibc to keep it, ``keep_freed_host_memory``), so it depends on how the
    heap fragments; the in-use peak is what the run's tensors and buffers really held at once, the CPU
    counterpart of CUDA's max-allocated. None where the C library is not glibc."""

    def __init__(self, interval: float = IN_USE_INTERVAL):
        import ctypes
        import threading

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
        try:
            self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
            self._mallinfo2.restype = MallInfo2
        except (OSError, AttributeError):
            self._mallinfo2 = None
        self.peak: int | None = None
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            info = self._mallinfo2()
            self.peak = max(self.peak or 0, info.uordblks + info.hblkhd)
            time.sleep(self.interval)

    def __enter__(self) -> "InUseSampler":
        if self._mallinfo2 is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def worker(args) -> dict:
    import torch

    load_start = load_average()
    with tempfile.TemporaryDirectory(dir=args.cache_root) as run_dir:
        method, ctx, configured_gap = build_run(args.variant, args.format, args.steps, args.gap, args.data,
                                                args.cache_root, run_dir, batch=BATCHES[args.batch])
        start = time.perf_counter()
        with InUseSampler() as in_use:
            summary = method.fit(ctx)
        wall = time.perf_counter() - start
        log = read_log(run_dir)
    cuda = torch.cuda.is_available() and summary["device"].startswith("cuda")
    return {"variant": args.variant, "method": VARIANTS[args.variant][0], "format": args.format,
            "batch": args.batch, "batch_size": ctx.train["batch_size"], "grad_accum": ctx.train["grad_accum"],
            "hparams": method.hparams,
            "configured_update_gap": configured_gap, "device": summary["device"],
            "threads": torch.get_num_threads(), "wall_seconds": round(wall, 2),
            "setup_seconds": round(wall - summary["train_seconds"], 2),
            "step_seconds": [e["seconds"] for e in log], "refreshes": [e.get("refreshes", 0) for e in log],
            "svd_seconds": [e.get("svd_seconds", 0.0) for e in log],
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if cuda else
            int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "memory_kind": "cuda max allocated" if cuda else "peak RSS of the worker process",
            "peak_in_use_bytes": None if cuda else in_use.peak, "in_use_interval_s": in_use.interval,
            "optimizer_state_bytes": summary["optimizer_state_bytes"],
            "trainable_parameters": summary["trainable_parameters"],
            "load_average": [round(load_start, 2), round(load_average(), 2)],
            "commit": measured_commit()}


# --- main: run the workers, summarise ---------------------------------------------------------------------
def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(raw: dict, warmup: int) -> dict:
    """First / warm-up / steady / refresh / amortised seconds and the SVD share of one worker's measurements:
    steps before ``warmup`` are reported, never averaged into the steady or refresh means."""
    steps, refreshes, svd = raw["step_seconds"], raw["refreshes"], raw["svd_seconds"]
    if len(steps) <= warmup:
        raise ValueError(f"{len(steps)} steps leave nothing after {warmup} warm-up steps; raise --steps")
    later = range(max(warmup, 1), len(steps))
    steady = mean([steps[i] for i in later if not refreshes[i]])
    refresh_steps = [i for i in later if refreshes[i]]
    out = {"first": round(steps[0], 3), "warmup": mean(steps[1:warmup]), "steady": steady, "refresh": None,
           "amortised": steady, "svd_seconds_per_refresh": None, "svd_share": None}
    gap = raw["configured_update_gap"]
    if refresh_steps and steady is not None and gap:
        refresh = mean([steps[i] for i in refresh_steps])
        svd_per_refresh = mean([svd[i] for i in refresh_steps])
        amortised = steady + (refresh - steady) / gap
        out.update(refresh=refresh, amortised=amortised, svd_seconds_per_refresh=svd_per_refresh,
                   svd_share=svd_per_refresh / gap / amortised)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def run_worker(variant: str, fmt: str, batch: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--format", fmt, "--batch", batch, "--steps",
           str(args.steps), "--gap", str(args.gap), "--data", str(args.data), "--cache-root", str(args.cache_root)]
    print(f"[bench] {batch:6s} {fmt:8s} {variant:18s} ...", end=" ", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"worker {variant}/{fmt} failed:\n{done.stderr[-3000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    result = {**raw, **summarise(raw, args.warmup)}
    print(f"steady {result['steady']:.2f} s/step, amortised {result['amortised']:.2f}, first {result['first']:.2f}, "
          f"peak {result['peak_memory_bytes'] / 2**30:.2f} GiB, load {raw['load_average']}", flush=True)
    return result


def measured_commit() -> str:
    """The commit measured, with ``+dirty`` when tracked files differ from it (such a reading is not committed)."""
    from gemsbench.cli.train import git_commit

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip()
    return git_commit() + ("+dirty" if dirty else "")


def _relative(path) -> str:
    """A path as written into the report: relative to the repository when inside it (no machine paths).
    Symbolic links are not followed: a checkout whose ``cache`` links elsewhere still writes ``cache/...``."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def knowledge_space(args) -> dict:
    """Make sure the default GEMS knowledge space is cached before any worker needs it; time it if not."""
    from gemsbench.knowledge import ensure_knowledge_space
    from gemsbench.methods.registry import build_method

    space = build_method("gems").knowledge_space()
    path, collected = ensure_knowledge_space(BACKBONE, args.cache_root, space, progress=True)
    return {"path": _relative(path), "collection": collected or "already cached", "stem": space.stem}


def ratios(results: dict) -> dict:
    """Per batch setting and format, each variant's steady and amortised step time and peak memory over full
    fine-tuning's of the same run."""
    out: dict = {}
    for batch, by_format in results.items():
        for fmt, by_variant in by_format.items():
            base = by_variant.get("full_ft")
            if not base or not base.get("steady"):
                continue
            out.setdefault(batch, {})[fmt] = {
                v: {"steady": round(r["steady"] / base["steady"], 3),
                    "amortised": round(r["amortised"] / base["steady"], 3),
                    "memory": round(r["peak_memory_bytes"] / base["peak_memory_bytes"], 3),
                    "in_use": round(r["peak_in_use_bytes"] / base["peak_in_use_bytes"], 3)
                    if r.get("peak_in_use_bytes") and base.get("peak_in_use_bytes") else None}
                for v, r in by_variant.items()}
    return out


def summary_lines(report: dict) -> list[str]:
    """GEMS over full fine-tuning per batch setting and format: steady and amortised step time, peak memory,
    each against its target where the issue sets one (the paper's batch)."""
    lines = ["| batch | format | GEMS / full FT steady | amortised | peak memory | peak in use | targets (paper batch) |",
             "|---|---|---|---|---|---|---|"]
    for batch, by_format in report["ratios"].items():
        for fmt, by_variant in by_format.items():
            r = by_variant.get("gems")
            if r is None:
                continue
            target = ""
            if batch == "paper":
                time_ok = "met" if r["amortised"] <= TARGETS[fmt] else "NOT met"
                memory_ok = "met" if r["memory"] <= MEMORY_TARGET else "NOT met"
                in_use_ok = "" if r.get("in_use") is None else \
                    f", in use {'met' if r['in_use'] <= MEMORY_TARGET else 'NOT met'}"
                target = f"≤ {TARGETS[fmt]}× per step (amortised): {time_ok}; memory ≤ {MEMORY_TARGET}×: RSS " \
                         f"{memory_ok}{in_use_ok}"
            in_use = "" if r.get("in_use") is None else f"{r['in_use']}×"
            lines.append(f"| {batch} | {fmt} | {r['steady']}× | {r['amortised']}× | {r['memory']}× | {in_use} | "
                         f"{target} |")
    return lines


def memory_floor_lines(report: dict) -> list[str]:
    """What GEMS's bytes in use cannot go below, per batch setting and format, from the run's own numbers.

    Exact GEMS accumulates both task gradients at full size over a step's micro-batches (the clipping norm and
    the heuristic gate's norms are norms of the summed gradients), where AdamW accumulates one: one gradient's
    bytes G more. Against that, its optimizer holds S_gems (subspace bases and moments, null projectors, AdamW
    on the untargeted weights) instead of AdamW's S_adamw. With full fine-tuning's activations the floor is
    in_use(full FT) + G + S_gems − S_adamw."""
    lines = ["| batch | format | G (one gradient) GiB | S_adamw GiB | S_gems GiB | floor GiB | floor × full FT | "
             "measured × full FT |", "|---|---|---|---|---|---|---|---|"]
    for batch, by_format in report["results"].items():
        for fmt, by_variant in by_format.items():
            ft, gems = by_variant.get("full_ft"), by_variant.get("gems")
            if not ft or not gems or not ft.get("peak_in_use_bytes") or not gems.get("peak_in_use_bytes"):
                continue
            grad = 4 * gems["trainable_parameters"]  # float32 weights, hence gradients
            floor = ft["peak_in_use_bytes"] + grad + gems["optimizer_state_bytes"] - ft["optimizer_state_bytes"]
            lines.append(f"| {batch} | {fmt} | {grad / 2**30:.3f} | {ft['optimizer_state_bytes'] / 2**30:.3f} | "
                         f"{gems['optimizer_state_bytes'] / 2**30:.3f} | {floor / 2**30:.2f} | "
                         f"{floor / ft['peak_in_use_bytes']:.3f}× | "
                         f"{gems['peak_in_use_bytes'] / ft['peak_in_use_bytes']:.3f}× |")
    return lines if len(lines) > 2 else []


def worker_results(report: dict) -> list[dict]:
    """Every worker's result in a report (results: batch -> format -> variant -> result)."""
    return [r for by_format in report["results"].values() for by_variant in by_format.values()
            for r in by_variant.values()]


def markdown(report: dict) -> str:
    # readings taken before the workers recorded the interval sampled every 10 ms
    in_use_ms = " / ".join(f"{1000 * i:g} ms" for i in sorted({r.get("in_use_interval_s", 0.01)
                                                                for r in worker_results(report)}))
    lines = [f"# GEMS step cost ({report['device']}, {report['threads']} threads, {report['steps']} steps of which "
             f"{report['warmup']} warm-up, SVD refresh measured with update_gap {report['gap']}; commit "
             f"{report.get('commit', 'not recorded')})", "",
             f"Knowledge space: {report['knowledge_space']['collection']}.", "",
             *summary_lines(report), "",
             "| batch | format | variant | steady s/step | × full FT | amortised s/step | × full FT | first step s "
             "| warm-up s/step | SVD s/refresh | SVD share | peak memory GiB | × full FT | peak in use GiB | × full FT "
             "| load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(batch, fmt, variant, r) for batch, by_format in report["results"].items()
            for fmt, by_variant in by_format.items() for variant, r in by_variant.items()]
    for batch, fmt, variant, r in rows:
        ratio = report["ratios"].get(batch, {}).get(fmt, {}).get(variant, {})
        svd = "" if r["svd_seconds_per_refresh"] is None else f"{r['svd_seconds_per_refresh']:.1f}"
        share = "" if r["svd_share"] is None else f"{100 * r['svd_share']:.0f} %"
        warm = "" if r["warmup"] is None else f"{r['warmup']:.2f}"
        in_use = "" if r.get("peak_in_use_bytes") is None else f"{r['peak_in_use_bytes'] / 2**30:.2f}"
        lines.append(f"| {batch} ({r['batch_size']}×{r['grad_accum']}) | {fmt} | {variant} | {r['steady']:.2f} | "
                     f"{ratio.get('steady', '')} | {r['amortised']:.2f} | {ratio.get('amortised', '')} | "
                     f"{r['first']:.1f} | {warm} | {svd} | {share} | {r['peak_memory_bytes'] / 2**30:.2f} | "
                     f"{ratio.get('memory', '')} | {in_use} | {ratio.get('in_use') or ''} | "
                     f"{r['load_average'][0]}–{r['load_average'][1]} |")
    lines += ["", "Targets (GEMS vs full FT at the paper's batch): " + ", ".join(
                  f"{f} ≤ {t}× per step" for f, t in TARGETS.items()) + f", peak memory ≤ {MEMORY_TARGET}×.",
              "Batch = units (prompts or windows) per step's pass group × accumulation steps; `config` is the "
              "config's, `paper` the paper's effective batch (32 prompts × 4 accumulation steps).",
              "Amortised = steady + (refresh step − steady) / the method's configured update_gap.",
              "Peak memory = the worker's peak RSS on a CPU (CUDA max-allocated on a GPU); peak in use = the most "
              f"bytes glibc's allocator had handed out at once (sampled every {in_use_ms}): RSS also counts freed memory "
              "the allocator keeps in its arenas for reuse, which depends on how the heap fragments."]
    floor = memory_floor_lines(report)
    if floor:
        lines += ["", "**Memory floor of exact GEMS** (bytes in use): exact GEMS accumulates both task gradients at "
                  "full size over a step's micro-batches (clipping and the heuristic gate need norms of the summed "
                  "gradients), one gradient G more than AdamW's one; its optimizer holds S_gems (subspace bases and "
                  "moments, null projectors, AdamW on the untargeted weights) instead of AdamW's moments S_adamw. "
                  "With full fine-tuning's activations: floor = in use (full FT) + G + S_gems − S_adamw. In `prompt` "
                  "the row split holds fewer activations than autograd's graph, so the measurement can be below it.",
                  "", *floor]
    commits = sorted({r["commit"] for r in worker_results(report) if r.get("commit")})
    if commits and commits != [report.get("commit")]:
        lines += ["", f"Workers ran at: {', '.join(commits)} (each worker records the commit it ran; the run "
                  f"started at {report.get('commit')})."]
    return "\n".join(lines) + "\n"


def main(args) -> None:
    import torch

    args.cache_root.mkdir(parents=True, exist_ok=True)
    args.data = dataset_dir(args.cache_root)
    start = time.perf_counter()
    report = {"commit": measured_commit(), "steps": args.steps, "warmup": args.warmup, "gap": args.gap,
              "data": _relative(args.data),
              "threads": torch.get_num_threads(),
              "device": default_config()["device"], "knowledge_space": knowledge_space(args), "results": {}}
    for batch in args.batches:
        plan = PLAN if batch == "config" else PAPER_PLAN
        report["results"][batch] = {fmt: {v: run_worker(v, fmt, batch, args) for v in args.variants or plan[fmt]}
                                    for fmt in args.formats}
    report["device"] = worker_results(report)[0]["device"]
    report["ratios"] = ratios(report["results"])
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gems.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench_gems.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="steps per variant")
    p.add_argument("--warmup", type=int, default=3,
                   help="steps 0 .. warmup-1 are reported, not averaged into the steady and refresh means")
    p.add_argument("--gap", type=int, default=4, help="update_gap of the GEMS variants during the benchmark")
    p.add_argument("--formats", nargs="+", default=["prompt", "timeline"], choices=["prompt", "timeline"])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: PLAN in the script")
    p.add_argument("--cache-root", type=Path, default=ROOT / "cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--batches", nargs="+", default=list(BATCHES), choices=list(BATCHES),
                   help="batch settings: the config's and the paper's effective batch (32 x 4)")
    p.add_argument("--format", choices=["prompt", "timeline"], help=argparse.SUPPRESS)
    p.add_argument("--batch", choices=list(BATCHES), default="config", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only write bench_gems.md again from a saved bench_gems.json (no measurement)")
    args = p.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        (args.render.parent / "bench_gems.md").write_text(markdown(saved))
    elif args.worker:
        args.variant = args.worker
        print(json.dumps(worker(args)))
    else:
        main(args)
