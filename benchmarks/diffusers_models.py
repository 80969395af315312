"""Benchmark: diffusers' transformers (small configs from ``tests/test_diffusers_models.py``) under hero's
defaults and under HERO's hierarchy (``cache_target="residual"``: the split measured, shallow blocks refreshed).

Run: ``python benchmarks/diffusers_models.py [--lowering aot_eager|inductor]``. For each model: the blocks hero
found; for the hierarchy the measured split, the blocks refreshed and their tokens per cheap step; for each
configuration the PSNR of the second of two 12-step generations against full compute (the eager model), or
the fallback reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_diffusers_models import CASES, Case, generate

from hero_compile import GraphStats, HeroBackend, HeroConfig
from hero_compile.measurement import psnr_over_reference_range

CONFIGS = {"defaults": HeroConfig(), "hierarchy": HeroConfig(cache_target="residual")}


def second_generation(case: Case, config: HeroConfig) -> tuple[torch.Tensor, GraphStats]:
    torch._dynamo.reset()
    backend = HeroBackend(config)
    compiled = torch.compile(case.model, backend=backend, fullgraph=True)
    generate(case, compiled)
    return generate(case, compiled), backend.stats().graphs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lowering", choices=("aot_eager", "inductor"), default="aot_eager")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | blocks | split (hierarchy) | blocks refreshed | tokens per cheap step | PSNR vs full, defaults "
          "(dB) | PSNR vs full, hierarchy (dB) |\n|---|---|---|---|---|---|---|", flush=True)
    for name, make in CASES.items():
        torch.manual_seed(0)
        case = make()
        case.model.eval()
        reference = generate(case, case.model)
        psnr, graphs = {}, {}
        for label, config in CONFIGS.items():
            result, graphs[label] = second_generation(case, config.replace(lowering=args.lowering))
            accelerated = graphs[label].accelerated
            psnr[label] = f"{psnr_over_reference_range(result, reference):.1f}" if accelerated else (
                f"falls back: {graphs[label].fallback_reason}")
        hierarchy = graphs["hierarchy"]
        refreshed = hierarchy.tokens_refreshed_per_cheap_step
        tokens = ", ".join(sorted({str(n) for n in refreshed.values()})) or "-"
        print(f"| {name} | {len(hierarchy.blocks)} | {hierarchy.split} | {len(refreshed)} of {hierarchy.split} | "
              f"{tokens} | {psnr['defaults']} | {psnr['hierarchy']} |", flush=True)


if __name__ == "__main__":
    main()
