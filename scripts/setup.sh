#!/usr/bin/env bash
# Create .venv with hero-compile, the world model and the benchmark harness (all editable) and the test tools;
# torch pinned by constraints.txt. One line per phase, so that the quiet minute of pip says what it is doing.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
phase() { echo "setup [$((SECONDS - start)) s]: $*"; }
if [ -x .venv/bin/python ]; then
    phase "using the virtual environment .venv"
else
    phase "creating the virtual environment .venv"
    python3 -m venv .venv
fi
phase "installing torch 2.13.0 (pinned by constraints.txt; a large download the first time)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
phase "installing hero-compile with its test tools, the world model (./world) and the benchmark harness (./benchmarks)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]" -e ./world -e ./benchmarks
phase "done"
