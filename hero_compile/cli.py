"""The ``hero-compile`` command: ``demo`` (the bundled world model) and ``bench`` (the benchmark DiT)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hero-compile", description="HERO acceleration for diffusion transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="accelerate the bundled world model and print speedup and quality")
    demo.add_argument("--seeds", type=int, default=2, help="held-out mazes rolled out as one batch")
    demo.add_argument("--chunks", type=int, default=3, help="chunks of future frames per rollout")
    demo.add_argument("--steps", type=int, default=30, help="denoising steps per chunk")
    demo.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance on the action")
    demo.add_argument("--repeats", type=int, default=2, help="timed rollouts per method (median)")
    demo.add_argument("--weights", type=Path, help="folder of the world model's weights (default: the shipped ones)")
    demo.add_argument("--json", type=Path, help="write the figures to this file")
    demo.add_argument("--out", type=Path, help="write side-by-side PNG strips to this folder")
    bench = commands.add_parser("bench", help="hero vs plain Inductor on the benchmark DiT")
    bench.add_argument("--quick", action="store_true", help="a small model and few steps, for a smoke run")
    bench.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return _bench(quick=args.quick, json_path=args.json)


def _demo(args: argparse.Namespace) -> int:
    from hero_compile.world.checkpoint import WEIGHTS_DIR, WeightsError
    from hero_compile.world.demo import demo, report, save_json, write_strip

    try:
        result = demo(seeds=args.seeds, chunks=args.chunks, steps=args.steps, guidance=args.guidance,
                      repeats=args.repeats, weights=args.weights or WEIGHTS_DIR)
    except WeightsError as error:
        print(f"hero-compile demo: {error}", file=sys.stderr)
        return 2
    print(report(result))
    if args.json:
        save_json(result, args.json)
    if args.out:
        print(f"strips written to {write_strip(result, args.out)}")
    return 0


def _bench(quick: bool, json_path: Path | None) -> int:
    from hero_compile.bench.speed import compare_on_dit
    from hero_compile.config import HeroConfig
    from hero_compile.testing.dit import DiTConfig

    model = DiTConfig(hidden=64, heads=2, frames=1, height=16, width=16) if quick else DiTConfig()
    [result] = compare_on_dit({"defaults": HeroConfig()}, model, steps=10 if quick else 20, repeats=1 if quick else 3)
    for key in ("speedup", "flop_speedup", "efficiency", "psnr_vs_full"):
        print(f"{key:>14}: {result[key]:.3f}")
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
