"""Benchmark: hero vs plain Inductor on the 12-block DiT (hidden 256, 1024 tokens, 20 steps, 2 threads).

Run: ``python benchmarks/speed_dit.py`` (hero defaults, and extrapolation alone), or ``--sweep`` for the
settings compared in docs/results.md; ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import json

from hero_bench.speed import compare_on_dit

from hero_compile.config import HeroConfig

RESIDUAL = HeroConfig(cache_target="residual")

DEFAULTS = {
    "output (defaults)": HeroConfig(),
    "residual + refresh": RESIDUAL,
    "residual, no refresh": RESIDUAL.replace(token_refresh=False),
}

SWEEP = {
    "residual + refresh": RESIDUAL,
    "residual, no refresh": RESIDUAL.replace(token_refresh=False),
    "residual, no refresh, interval 2": RESIDUAL.replace(token_refresh=False, interval=2),
    "residual, no refresh, interval 4": RESIDUAL.replace(token_refresh=False, interval=4),
    "residual + refresh, interval 4": RESIDUAL.replace(interval=4),
    "residual + refresh, interval 5": RESIDUAL.replace(interval=5),
    "residual + refresh 0.5": RESIDUAL.replace(refresh_ratio=0.5),
    "residual + refresh 0.125": RESIDUAL.replace(refresh_ratio=0.125, patch_size=4),
    "residual + refresh, kv cache": RESIDUAL.replace(kv_source="cache"),
    "residual + refresh, split 2": RESIDUAL.replace(split=2),
    "residual + refresh, split 6": RESIDUAL.replace(split=6),
    "output (defaults)": HeroConfig(),
    "residual + refresh, order 2": RESIDUAL.replace(extrapolation_order=2, warmup_steps=3),
}

COLUMNS = ("speedup", "flop_speedup", "efficiency", "psnr_vs_full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", action="store_true", help="compare the settings of docs/results.md")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    rows = compare_on_dit(SWEEP if args.sweep else DEFAULTS, steps=args.steps, repeats=args.repeats,
                          threads=args.threads)
    print(f"| setting | {' | '.join(COLUMNS)} |")
    print(f"|---|{'---|' * len(COLUMNS)}")
    for row in rows:
        print(f"| {row['setting']} | " + " | ".join(f"{row[c]:.3g}" for c in COLUMNS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
