"""Benchmark: diffusers' transformers (small configs from ``tests/test_diffusers_models.py``) under hero defaults.

Run: ``python benchmarks/diffusers_models.py [--lowering aot_eager|inductor]``. For each model: the blocks and
split hero found, full and cheap calls over two 12-step generations, and the PSNR of the second generation
against full compute (the eager model), or the fallback reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_diffusers_models import CASES, generate

from hero_compile import HeroBackend, HeroConfig
from hero_compile.measurement import psnr_over_reference_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lowering", choices=("aot_eager", "inductor"), default="aot_eager")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | blocks | split | full / cheap calls | PSNR vs full (dB) |\n|---|---|---|---|---|")
    for name, make in CASES.items():
        torch.manual_seed(0)
        torch._dynamo.reset()
        case = make()
        case.model.eval()
        reference = generate(case, case.model)
        backend = HeroBackend(HeroConfig(lowering=args.lowering))
        compiled = torch.compile(case.model, backend=backend, fullgraph=True)
        generate(case, compiled)
        result = generate(case, compiled)
        graph = backend.stats().graphs[0]
        if not graph.accelerated:
            print(f"| {name} | - | - | - | falls back: {graph.fallback_reason} |")
            continue
        print(f"| {name} | {len(graph.blocks)} | {graph.split} | {graph.full_calls} / {graph.cheap_calls} | "
              f"{psnr_over_reference_range(result, reference):.1f} |")


if __name__ == "__main__":
    main()
