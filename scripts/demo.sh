#!/usr/bin/env bash
# The main demo: install what is needed, then accelerate the bundled world model and print speed and quality.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hero-compile demo "$@"
