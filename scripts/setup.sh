#!/usr/bin/env bash
# Create .venv with hero-compile, the world model and the benchmark harness (all editable) and the test tools;
# torch pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]" -e ./world -e ./benchmarks
