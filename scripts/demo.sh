#!/usr/bin/env bash
# The main demo: install what is needed, then accelerate the bundled world model and print settings, times with
# their spread, speedup and quality, and write labelled image strips and animations (arguments go to
# `hero-compile demo`; see `.venv/bin/hero-compile demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "demo: hero-compile demo $* (about 5 minutes on 2 CPU cores: compiling, then 4 rollouts per method)"
.venv/bin/hero-compile demo "$@"
