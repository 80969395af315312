#!/usr/bin/env bash
# The project's test command: install what is needed, then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check hero_compile world tests benchmarks examples scripts
.venv/bin/mypy
.venv/bin/python -m pytest tests -q --durations=10 "$@"
