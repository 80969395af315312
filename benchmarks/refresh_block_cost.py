"""Benchmark: cost of a refreshed block (ratio 0.25) relative to the full block, for both key/value sources.

Run: ``python benchmarks/refresh_block_cost.py``
"""

from __future__ import annotations

from hero_bench.block_cost import refreshed_block_cost


def main() -> None:
    for kv_source in ("current", "cache"):
        result = refreshed_block_cost(kv_source=kv_source)
        print(
            f"kv_source={kv_source:8s} tokens {result['tokens_refreshed']}/{result['tokens']}: "
            f"full step {result['seconds_full_step'] * 1e3:.1f} ms, "
            f"cheap step {result['seconds_cheap_step'] * 1e3:.1f} ms "
            f"-> refreshed block costs {result['block_cost']:.3f} of a full block"
        )


if __name__ == "__main__":
    main()
