# The two commands of the README. Both create .venv with the pinned dependencies first.
.PHONY: setup run test dry-run lint bench

setup:
	bash scripts/setup.sh

run: setup  ## the embedded default end to end (snakemake --cores all)
	. .venv/bin/activate && snakemake --cores all

test: setup  ## the test suite (what CI runs)
	. .venv/bin/activate && python -m pytest

dry-run: setup
	. .venv/bin/activate && snakemake -n

lint: setup
	. .venv/bin/activate && snakemake --lint

bench: setup  ## GEMS vs full fine-tuning vs LoRA seconds per step and memory (ratios from one run)
	. .venv/bin/activate && python benchmarks/bench_gems.py
