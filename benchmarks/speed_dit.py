"""Benchmark: hero vs plain Inductor on the 12-block DiT (hidden 256, 1024 tokens, 20 steps, 2 threads).

Run: ``python benchmarks/speed_dit.py`` (hero defaults, and extrapolation alone), or ``--sweep`` for the
settings compared in docs/results.md; ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import json

from hero_compile.bench.speed import compare_on_dit
from hero_compile.config import HeroConfig

DEFAULTS = {"defaults": HeroConfig(), "extrapolation only": HeroConfig(token_refresh=False)}

SWEEP = {
    **DEFAULTS,
    "extrapolation only, interval 2": HeroConfig(token_refresh=False, interval=2),
    "extrapolation only, interval 4": HeroConfig(token_refresh=False, interval=4),
    "interval 4": HeroConfig(interval=4),
    "interval 5": HeroConfig(interval=5),
    "refresh 0.5": HeroConfig(refresh_ratio=0.5),
    "refresh 0.125": HeroConfig(refresh_ratio=0.125, patch_size=4),
    "kv cache": HeroConfig(kv_source="cache"),
    "split 2": HeroConfig(split=2),
    "split 6": HeroConfig(split=6),
    "output cached": HeroConfig(cache_target="output"),
    "order 2": HeroConfig(extrapolation_order=2, warmup_steps=3),
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
