# The two commands of the README. Both create .venv with the pinned dependencies first.
.PHONY: setup run test dry-run lint bench bench-throughput report report-check publish

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

bench: setup  ## GEMS vs full FT vs LoRA: s/step and peak memory at the config and the paper batch, both formats (ratios from one run)
	. .venv/bin/activate && python benchmarks/bench_gems.py

bench-throughput: setup  ## tokens/s, targets/s, model FLOP/s and MFU of full FT, LoRA and GEMS (both formats, one run)
	. .venv/bin/activate && python benchmarks/bench_throughput.py

report: setup  ## the HTML report of the default run (tables and figures with captions)
	. .venv/bin/activate && snakemake --cores all report

report-check: setup  ## open the default report in headless Chromium and check every figure renders
	. .venv/bin/activate && pip install -q playwright==1.65.2 && python scripts/check_report.py results/default/report.html

publish: setup  ## copy a run's tables into results/published/<config> with provenance (after `make run`; CONFIG=default)
	. .venv/bin/activate && python scripts/publish_reference.py --results results/$(or $(CONFIG),default)
