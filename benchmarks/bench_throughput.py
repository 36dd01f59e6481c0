"""Training throughput of the LLM methods on the embedded default: tokens/s, targets/s, model FLOP/s and MFU.

Every variant trains through the harness (``method.fit``, the shared loop) with ``config/default.yaml``'s train
settings — the batches, packing and precision the DAG's runs use — for ``--steps`` steps in a worker process of
its own, in both formats, with the gradient-conflict measurement off (a measurement, not a method's cost). Per
variant and format it reports, over the steps from ``--warmup`` on:

* tokens/s — real (non-padding) tokens through the forward pass per second of the loop's step time;
* targets/s — labelled item positions per second;
* model FLOP/s — the model FLOPs of those steps (gemsbench.throughput: 2·N per token forward, 4·N per token
  and backward pass, the head at labelled positions; GEMS in the timeline format counts its two backward
  passes) per second;
* MFU — model FLOP/s ÷ the rate of a 2048³ matrix product in the run's compute dtype, measured in the same
  worker process (same threads) right after training. The header also gives the bf16 and fp32 rates: on a CPU
  without bf16 units (AVX2) the default ``precision: auto`` trains in fp32, whose rate is the one to compare.

    python benchmarks/bench_throughput.py                  # ~10 min on 2 CPU cores
    python benchmarks/bench_throughput.py --formats timeline --variants full_ft lora --steps 6
    python benchmarks/bench_throughput.py --batch-size 32 --out /tmp/bench32   # larger steps, same settings else

Writes ``benchmarks/results/bench_throughput.{json,md}``. Goals from the issue: full fine-tuning in the timeline
format at MFU ≥ 0.35 (0.50 aimed for), LoRA's seconds per step ≤ full fine-tuning's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gems  # noqa: E402  (data, knowledge space, one variant's run set-up)

ROOT = bench_gems.ROOT
CONFIG = ROOT / "config" / "default.yaml"
#: variant -> (config entry, hyper-parameter overrides)
VARIANTS = {"full_ft": ("full_ft", {}), "lora": ("lora", {}), "dora": ("dora", {}), "moe_lora": ("moe_lora", {}),
            "gems": ("gems", {})}
DEFAULT_VARIANTS = ["full_ft", "lora", "gems"]


def worker(args) -> dict:
    import torch

    from gemsbench.throughput import gemm_rate

    with tempfile.TemporaryDirectory(dir=args.cache_root) as run_dir:
        method, ctx, _ = bench_gems.build_run(args.variant, args.format, args.steps, 1000, args.data,
                                              args.cache_root, run_dir, CONFIG, VARIANTS)
        if args.batch_size:
            ctx.train["batch_size"] = args.batch_size
        summary = method.fit(ctx)
        log = bench_gems.read_log(run_dir)
    device = summary["device"]
    return {"variant": args.variant, "format": args.format, "device": device, "threads": torch.get_num_threads(),
            "precision": summary["precision"], "body_parameters": summary["body_parameters"],
            "targets_per_epoch": summary["targets_per_epoch"],
            "steps": [{k: e[k] for k in ("seconds", "tokens", "n_rec", "n_search", "model_flops", "passes")}
                      for e in log],
            "gemm": {"run": summary["gemm_flops_per_second"], "fp32": gemm_rate("fp32", device),
                     "bf16": gemm_rate("bf16", device)},
            "load_average": summary["load_average"]}


def summarise(raw: dict, warmup: int) -> dict:
    steps = raw["steps"][warmup:]
    if not steps:
        raise ValueError(f"{len(raw['steps'])} steps leave nothing after {warmup} warm-up steps; raise --steps")
    seconds = sum(s["seconds"] for s in steps)
    flops = sum(s["model_flops"] for s in steps)
    targets = sum(s["n_rec"] + s["n_search"] for s in steps)
    return {"seconds_per_step": seconds / len(steps), "tokens_per_step": sum(s["tokens"] for s in steps) / len(steps),
            "tokens_per_second": sum(s["tokens"] for s in steps) / seconds,
            "targets_per_second": sum(s["n_rec"] + s["n_search"] for s in steps) / seconds,
            "model_flops_per_second": flops / seconds, "mfu": flops / seconds / raw["gemm"]["run"],
            "passes_per_step": sum(s["passes"] for s in steps) / len(steps),
            # one epoch of this format's training targets at the measured rate, and at MFU 1 (the FLOP floor:
            # the epoch's model FLOPs at the machine's matrix-product rate)
            "epoch_minutes": raw["targets_per_epoch"] * seconds / targets / 60,
            "epoch_minutes_at_mfu_1": raw["targets_per_epoch"] * flops / targets / raw["gemm"]["run"] / 60}


def run_worker(variant: str, fmt: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--format", fmt, "--steps", str(args.steps),
           "--data", str(args.data), "--cache-root", str(args.cache_root), "--batch-size", str(args.batch_size)]
    print(f"[bench] {fmt:8s} {variant:10s} ...", end=" ", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"worker {variant}/{fmt} failed:\n{done.stderr[-3000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    result = {**raw, **summarise(raw, args.warmup)}
    print(f"{result['seconds_per_step']:.2f} s/step, {result['tokens_per_second']:.0f} tokens/s, "
          f"MFU {result['mfu']:.2f} ({result['precision']}), load {raw['load_average']}", flush=True)
    return result


def markdown(report: dict) -> str:
    gemm = report["gemm"]
    lines = [f"# Training throughput ({report['device']}, {report['threads']} threads, {report['steps']} steps of "
             f"which {report['warmup']} warm-up; config/default.yaml's train settings"
             + (f" with {report['batch_size']} windows/prompts a step" if report["batch_size"] != "config" else "")
             + f"; commit {report['commit']})", "",
             f"2048³ matrix products in the worker processes: fp32 {gemm['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
             f"{gemm['bf16'] / 1e9:.0f} GFLOP/s; runs trained in {report['precision']} (precision: auto). "
             "MFU = model FLOP/s ÷ the rate in the run's dtype.", "",
             "| format | variant | s/step | × full FT | tokens/step | passes/step | tokens/s | targets/s "
             "| model GFLOP/s | MFU | epoch (min) | epoch at MFU 1 (min) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, by_variant in report["results"].items():
        base = by_variant.get("full_ft", {}).get("seconds_per_step")
        for variant, r in by_variant.items():
            ratio = f"{r['seconds_per_step'] / base:.2f}" if base else ""
            lines.append(f"| {fmt} | {variant} | {r['seconds_per_step']:.2f} | {ratio} | {r['tokens_per_step']:.0f} | "
                         f"{r['passes_per_step']:.1f} | {r['tokens_per_second']:.0f} | {r['targets_per_second']:.1f} | "
                         f"{r['model_flops_per_second'] / 1e9:.1f} | {r['mfu']:.2f} | {r['epoch_minutes']:.1f} | "
                         f"{r['epoch_minutes_at_mfu_1']:.1f} | "
                         f"{r['load_average'][0]}–{r['load_average'][1]} |")
    lines += ["", "Model FLOPs: 2·N per token forward + 4·N per token and backward pass (N = "
              f"{report['body_parameters'] / 1e6:.1f} M weights outside embeddings and head) + the head at labelled "
              "positions; GEMS in the timeline format takes two backward passes. Epoch: the format's training targets "
              "at the measured targets/s; at MFU 1: the epoch's model FLOPs at the matrix-product rate, a floor no "
              "implementation of these passes goes under on this machine. Goals: full FT timeline MFU ≥ 0.35 "
              "(0.50 aimed for); LoRA s/step ≤ full FT."]
    return "\n".join(lines) + "\n"


def main(args) -> None:
    import torch

    args.cache_root.mkdir(parents=True, exist_ok=True)
    args.data = bench_gems.dataset_dir(args.cache_root)
    start = time.perf_counter()
    knowledge = bench_gems.knowledge_space(args) if "gems" in args.variants else None
    results = {fmt: {v: run_worker(v, fmt, args) for v in args.variants} for fmt in args.formats}
    first = next(iter(next(iter(results.values())).values()))
    report = {"commit": bench_gems.measured_commit(), "steps": args.steps, "batch_size": args.batch_size or "config",
              "warmup": args.warmup, "threads": first["threads"], "device": first["device"],
              "precision": first["precision"], "body_parameters": first["body_parameters"],
              "gemm": {k: first["gemm"][k] for k in ("fp32", "bf16")}, "knowledge_space": knowledge,
              "torch": torch.__version__, "results": results, "total_seconds": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench_throughput.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="steps per variant and format")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the means (lazy allocations)")
    p.add_argument("--formats", nargs="+", default=["timeline", "prompt"], choices=["prompt", "timeline"])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--batch-size", type=int, default=0,
                   help="windows (timeline) or prompts per step; 0 = config/default.yaml's train.batch_size")
    p.add_argument("--cache-root", type=Path, default=ROOT / "cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--format", choices=["prompt", "timeline"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.variant = args.worker
        print(json.dumps(worker(args)))
    else:
        main(args)
