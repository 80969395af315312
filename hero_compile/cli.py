"""The ``hero-compile`` command: ``demo`` (the bundled world model), ``analyze`` (a report of what HERO finds in
a model) and ``bench`` (hero against full compute and the known caching methods)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hero-compile", description="HERO acceleration for diffusion transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="accelerate the bundled world model and print speedup and quality")
    demo.add_argument("--seeds", type=int, default=2, help="held-out mazes rolled out as one batch")
    demo.add_argument("--chunks", type=int, default=3, help="chunks of future frames per rollout")
    demo.add_argument("--steps", type=int, default=30, help="denoising steps per chunk")
    demo.add_argument("--guidance", type=float,
                      help="classifier-free guidance on the action (default: the world model's own)")
    demo.add_argument("--repeats", type=int, default=2, help="timed rollouts per method (median)")
    demo.add_argument("--weights", type=Path, help="folder of the world model's weights (default: the shipped ones)")
    demo.add_argument("--json", type=Path, help="write the figures to this file")
    demo.add_argument("--out", type=Path, help="write side-by-side PNG strips to this folder")
    analyze = commands.add_parser("analyze", help="profile a model and write a report (Markdown, JSON, PNG)")
    analyze.add_argument("target", nargs="?", default="world",
                         help="'world' (the bundled world model) or package.module:factory, a function returning "
                         "(model, example_inputs) or (model, example_inputs, sampler)")
    analyze.add_argument("--out", type=Path, default=Path("hero-analysis"), help="folder for the report")
    analyze.add_argument("--steps", type=int, default=30, help="denoising steps per generation")
    analyze.add_argument("--repeats", type=int, default=3, help="timed generations per method (median)")
    analyze.add_argument("--lowering", choices=("inductor", "aot_eager", "eager"), default="inductor",
                         help="how both plain and hero are compiled for the timing")
    bench = commands.add_parser("bench", help="hero against full compute and the known caching methods")
    bench.add_argument("--models", default="world,dit,cogvideox", help="comma-separated: world, dit, cogvideox")
    bench.add_argument("--quick", action="store_true",
                       help="small models, few steps, fewer settings, aot_eager lowering: a smoke run of minutes")
    bench.add_argument("--lowering", choices=("inductor", "aot_eager", "eager"),
                       help="how every method is compiled (default inductor; aot_eager with --quick)")
    bench.add_argument("--repeats", type=int, help="timed generations per method (median; default 3, 1 with --quick)")
    bench.add_argument("--out", type=Path, default=Path("hero-bench"),
                       help="folder for benchmarks.md, benchmarks.json and pareto.png")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "analyze":
            return _analyze(args)
        return _bench(args, " ".join(sys.argv[1:] if argv is None else argv))
    except _MissingTool as missing:
        print(f"hero-compile {args.command}: {missing}", file=sys.stderr)
        return 2


# The tools each subcommand needs beyond the core, and how to install them from a clone of the repository.
_TOOLS = {
    "hero_world": "the world model: pip install ./world",
    "hero_bench": "the benchmark harness: pip install ./benchmarks",
    "matplotlib": "the report's plots: pip install '.[report]'",
    "tqdm": "progress bars: pip install '.[report]'",
}


class _MissingTool(Exception):
    pass


def _require(*modules: str) -> None:
    """Fail with how to install them unless ``modules`` can be imported (checked before any heavy import)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise _MissingTool("needs " + "; ".join(_TOOLS[m] for m in missing))


def _demo(args: argparse.Namespace) -> int:
    _require("hero_world")
    from hero_world.checkpoint import WEIGHTS_DIR, WeightsError
    from hero_world.demo import demo, report, save_json, write_strip
    from hero_world.rollout import GUIDANCE

    try:
        result = demo(seeds=args.seeds, chunks=args.chunks, steps=args.steps,
                      guidance=GUIDANCE if args.guidance is None else args.guidance,
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


def _analyze(args: argparse.Namespace) -> int:
    _require("tqdm", "matplotlib", *(["hero_world"] if args.target == "world" else []))
    from tqdm import tqdm

    from hero_compile.analysis import ANALYSIS_PHASES, analyze
    from hero_compile.config import HeroConfig
    from hero_compile.report import write_report

    model, example_inputs, sampler = _analysis_target(args.target, args.steps)
    with tqdm(total=len(ANALYSIS_PHASES), desc="hero analyze", unit="phase") as bar:
        def progress(phase: str) -> None:
            bar.update(ANALYSIS_PHASES.index(phase) - bar.n)
            bar.set_postfix_str(phase)

        report = analyze(model, example_inputs, sampler, HeroConfig(lowering=args.lowering), steps=args.steps,
                         repeats=args.repeats, progress=progress)
        bar.update(bar.total - bar.n)
    written = write_report(report, args.out)
    print((args.out / "report.md").read_text())
    print(f"report written to {args.out} ({', '.join(p.name for p in written)})")
    return 0 if report.fallback_reason is None else 1


def _analysis_target(target: str, steps: int) -> tuple[Any, Any, Any]:
    if target == "world":
        from hero_world.target import world_model_target

        return world_model_target(steps=steps)
    module_name, _, factory_name = target.partition(":")
    if not factory_name:
        raise SystemExit(f"hero-compile analyze: target {target!r} must be 'world' or package.module:factory")
    made = getattr(importlib.import_module(module_name), factory_name)()
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise SystemExit(f"hero-compile analyze: {target}() must return (model, example_inputs[, sampler])")
    return (*made, None) if len(made) == 2 else made


def _bench(args: argparse.Namespace, command_line: str) -> int:
    _require("hero_bench")
    from hero_bench.methods import Lowering
    from hero_bench.suite import run_suite

    lowering: Lowering = args.lowering or ("aot_eager" if args.quick else "inductor")
    repeats = args.repeats or (1 if args.quick else 3)
    run_suite(args.models.split(","), args.out, quick=args.quick, lowering=lowering, repeats=repeats,
              command=f"hero-compile {command_line}")
    print((args.out / "benchmarks.md").read_text())
    print(f"written to {args.out} (benchmarks.md, benchmarks.json, pareto.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
