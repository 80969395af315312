"""The ``hero-compile`` command: ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hero-compile", description="HERO acceleration for diffusion transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="accelerate the bundled world model and print speedup and quality")
    bench = commands.add_parser("bench", help="hero vs plain Inductor on the benchmark DiT")
    bench.add_argument("--quick", action="store_true", help="a small model and few steps, for a smoke run")
    bench.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("The reference world model is not bundled yet; run `hero-compile bench` for the DiT benchmark.")
        return 0
    return _bench(quick=args.quick, json_path=args.json)


def _bench(quick: bool, json_path: str | None) -> int:
    from hero_compile.bench.speed import speed_dit
    from hero_compile.testing.dit import DiTConfig

    model = DiTConfig(hidden=64, heads=2, frames=1, height=16, width=16) if quick else DiTConfig()
    result = speed_dit(model_config=model, steps=10 if quick else 20, repeats=1 if quick else 3)
    for key in ("speedup", "flop_speedup", "efficiency", "psnr_vs_full"):
        print(f"{key:>14}: {result[key]:.3f}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
