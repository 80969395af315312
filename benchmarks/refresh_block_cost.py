"""Benchmark: cost of a refreshed block (ratio 0.25) relative to the full block, for both key/value sources, on
the benchmark DiT and on a Wan-style diffusers transformer of the same size.

Run: ``python benchmarks/refresh_block_cost.py``
"""

from __future__ import annotations

import torch
from hero_bench.block_cost import dit, refreshed_block_cost, wan


def main() -> None:
    for build in (dit, wan):
        stack = build()
        for kv_source in ("current", "cache"):
            torch._dynamo.reset()
            result = refreshed_block_cost(stack, kv_source=kv_source)
            print(
                f"{result['model']:4s} kv_source={kv_source:8s} "
                f"tokens {result['tokens_refreshed']}/{result['tokens']}: "
                f"full step {result['seconds_full_step'] * 1e3:.1f} ms, "
                f"cheap step {result['seconds_cheap_step'] * 1e3:.1f} ms "
                f"-> refreshed block costs {result['block_cost']:.3f} of a full block", flush=True
            )


if __name__ == "__main__":
    main()
