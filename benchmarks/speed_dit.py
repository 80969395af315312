"""Benchmark: hero defaults vs plain Inductor on the 12-block DiT (1024 tokens, 20 steps, 2 threads).

Run: ``python benchmarks/speed_dit.py [--json PATH] [--interval N] [--split K] ...``
"""

from __future__ import annotations

import argparse
import json

from hero_compile.bench.speed import speed_dit
from hero_compile.config import HeroConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures to this file")
    for field in ("warmup_steps", "interval", "final_full_steps", "extrapolation_order"):
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, type=int)
    parser.add_argument("--split", help="'auto' or the index of the first deep block")
    parser.add_argument("--cache-target", dest="cache_target", choices=("residual", "output"))
    args = parser.parse_args()
    changes = {
        k: v
        for k, v in vars(args).items()
        if k in HeroConfig.field_names() and v is not None
    }
    if "split" in changes and changes["split"] != "auto":
        changes["split"] = int(changes["split"])
    result = speed_dit(hero_config=HeroConfig().replace(**changes), steps=args.steps, repeats=args.repeats,
                       threads=args.threads)
    for key in ("seconds_inductor", "seconds_hero", "speedup", "flop_speedup", "efficiency", "psnr_vs_full", "split"):
        print(f"{key:>18}: {result[key]:.4g}" if isinstance(result[key], float) else f"{key:>18}: {result[key]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
