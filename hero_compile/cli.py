"""The ``hero-compile`` command: ``demo`` (the bundled world model), ``analyze`` (a report of what HERO finds in
a model) and ``bench`` (hero against full compute and the known caching methods)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hero-compile", description="HERO acceleration for diffusion transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="accelerate the bundled world model and print speedup and quality")
    demo.add_argument("--seeds", type=_count, default=2,
                      help="held-out mazes rolled out as one batch (default: %(default)s)")
    demo.add_argument("--chunks", type=_count, default=3,
                      help="chunks of future frames per rollout (default: %(default)s)")
    demo.add_argument("--steps", type=_count, default=30, help="denoising steps per chunk (default: %(default)s)")
    demo.add_argument("--guidance", type=_guidance,
                      help="classifier-free guidance on the action, a finite number >= 1, where 1 is none "
                      "(default: the world model's own)")
    demo.add_argument("--repeats", type=_count, default=3,
                      help="timed rollouts per method, alternated, after an untimed warm-up (median, and the spread: "
                      "min and max; default: %(default)s)")
    demo.add_argument("--weights", type=_existing_folder,
                      help="folder of the world model's weights (default: the shipped ones)")
    demo.add_argument("--json", type=_output_file,
                      help="write the settings, times and figures to this file (default: not written)")
    demo.add_argument("--out", type=_output_folder, default="hero-demo",
                      help="folder for the labelled PNG strips and animated GIFs, one of each per maze "
                      "(default: %(default)s)")
    analyze = commands.add_parser("analyze", help="profile a model and write a report (Markdown, JSON, PNG)")
    analyze.add_argument("target", nargs="?", default="world",
                         help="'world' (the bundled world model) or package.module:factory, a function returning "
                         "(model, example_inputs) or (model, example_inputs, sampler) (default: %(default)s)")
    analyze.add_argument("--out", type=_output_folder, default="hero-analysis",
                         help="folder for the report (default: %(default)s)")
    analyze.add_argument("--steps", type=_count, default=30,
                         help="denoising steps per generation (default: %(default)s)")
    analyze.add_argument("--repeats", type=_count, default=3,
                         help="timed generations per method (median; default: %(default)s)")
    analyze.add_argument("--lowering", choices=("inductor", "aot_eager", "eager"), default="inductor",
                         help="how both plain and hero are compiled for the timing (default: %(default)s)")
    bench = commands.add_parser("bench", help="hero against full compute and the known caching methods")
    bench.add_argument("--models", type=_bench_models, default=",".join(_BENCH_MODELS),
                       help=f"comma-separated, from {', '.join(_BENCH_MODELS)} (default: %(default)s)")
    bench.add_argument("--quick", action="store_true",
                       help="small models, few steps, fewer settings, aot_eager lowering: a smoke run of minutes")
    bench.add_argument("--lowering", choices=("inductor", "aot_eager", "eager"),
                       help="how every method is compiled (default: inductor; aot_eager with --quick)")
    bench.add_argument("--repeats", type=_count,
                       help="timed generations per method (median; default: 3, 1 with --quick)")
    bench.add_argument("--out", type=_output_folder, default="hero-bench",
                       help="folder for benchmarks.md, benchmarks.json and pareto.png (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "analyze":
            return _analyze(args)
        return _bench(args, " ".join(sys.argv[1:] if argv is None else argv))
    except _CommandError as error:
        print(f"hero-compile {args.command}: {error}", file=sys.stderr)
        return 2


class _CommandError(Exception):
    """A failure the user can fix (a missing tool, a bad target, missing weights): one line on stderr, exit 2."""


# Types for argparse: a bad value fails at parse time, naming the option, rather than minutes into a run.

def _count(text: str) -> int:
    """A number of seeds, chunks, steps or repeats."""
    try:
        value = int(text)
    except ValueError:
        value = 0  # not a whole number: rejected below, with the same message
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _guidance(text: str) -> float:
    """A guidance scale: 1 is no guidance; below 1 would weaken the action the world model is meant to follow."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan  # not a number: rejected below, with the same message
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1, got {text!r}")
    return value


_BENCH_MODELS = ("world", "dit", "cogvideox")


def _bench_models(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",")))  # each model once, in the order given
    unknown = [name for name in names if name not in _BENCH_MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model {', '.join(map(repr, unknown))}; choose from "
                                         f"{', '.join(_BENCH_MODELS)}")
    return names


def _existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder" if path.exists() else
                                         f"folder {text!r} does not exist")
    return path


def _output_folder(text: str) -> Path:
    """A folder to write into, created if missing."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    _check_creatable(path, text)
    return path


def _output_file(text: str) -> Path:
    """A file to write, its folder created if missing."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    _check_creatable(path, text)
    return path


def _check_creatable(path: Path, text: str) -> None:
    """What exists nearest above ``path`` must be a folder, or creating ``path`` would fail only after the run."""
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(existing)!r} is a file, not a folder")


# The tools each subcommand needs beyond the core, and how to install them from a clone of the repository.
_TOOLS = {
    "hero_world": "the world model: pip install ./world",
    "hero_bench": "the benchmark harness: pip install ./benchmarks",
    "matplotlib": "the report's plots: pip install '.[report]'",
    "tqdm": "progress bars: pip install '.[report]'",
}


def _require(*modules: str) -> None:
    """Fail with how to install them unless ``modules`` can be imported (checked before any heavy import)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise _CommandError("needs " + "; ".join(_TOOLS[m] for m in missing))


def _demo(args: argparse.Namespace) -> int:
    _require("hero_world")
    from hero_world.checkpoint import WEIGHTS_DIR, WeightsError
    from hero_world.data import HELD_OUT_SEEDS
    from hero_world.demo import ROW_LABELS, demo, report, save_json, write_images
    from hero_world.rollout import GUIDANCE

    if args.seeds > len(HELD_OUT_SEEDS):  # the demo would silently roll out fewer
        raise _CommandError(f"--seeds {args.seeds} is more than the {len(HELD_OUT_SEEDS)} held-out mazes")
    try:
        result = demo(seeds=args.seeds, chunks=args.chunks, steps=args.steps,
                      guidance=GUIDANCE if args.guidance is None else args.guidance,
                      repeats=args.repeats, weights=args.weights or WEIGHTS_DIR)
    except WeightsError as error:
        raise _CommandError(str(error)) from None
    print(report(result))
    images = write_images(result, args.out)
    print(f"images in {args.out}/: a PNG strip per maze (rows: {', '.join(ROW_LABELS)}; predicted frames left to "
          f"right) and an animated GIF of the same: {', '.join(p.name for p in images)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # as --out creates its folder
        save_json({**result, "images": [str(p) for p in images]}, args.json)
        print(f"figures written to {args.json}")
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
        from hero_world.checkpoint import WeightsError
        from hero_world.target import world_model_target

        try:
            return world_model_target(steps=steps)
        except WeightsError as error:
            raise _CommandError(str(error)) from None
    made = _call_factory(target)
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise _CommandError(f"{target}() must return (model, example_inputs[, sampler])")
    return (*made, None) if len(made) == 2 else made


def _call_factory(target: str) -> Any:
    """Import and call ``package.module:factory``: whatever fails is one line naming the target, not a traceback."""
    module_name, _, factory_name = target.partition(":")
    if not module_name or not factory_name:
        raise _CommandError(f"target {target!r} must be 'world' or package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module: a missing dependency, a syntax error, an error at import
        reason = str(error) if isinstance(error, ImportError) else _describe(error)
        raise _CommandError(f"cannot import module {module_name!r} for target {target!r} ({reason})") from None
    try:
        factory = getattr(module, factory_name)
    except AttributeError:
        raise _CommandError(f"module {module_name!r} has no factory {factory_name!r}") from None
    if not callable(factory):
        raise _CommandError(f"{target} is not callable (type {type(factory).__name__})")
    try:
        return factory()
    except Exception as error:
        raise _CommandError(f"{target}() raised {_describe(error)}") from None


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _bench(args: argparse.Namespace, command_line: str) -> int:
    _require("hero_bench")
    from hero_bench.methods import Lowering
    from hero_bench.suite import run_suite

    lowering: Lowering = args.lowering or ("aot_eager" if args.quick else "inductor")
    repeats = args.repeats or (1 if args.quick else 3)
    run_suite(args.models, args.out, quick=args.quick, lowering=lowering, repeats=repeats,
              command=f"hero-compile {command_line}")
    print((args.out / "benchmarks.md").read_text())
    print(f"written to {args.out} (benchmarks.md, benchmarks.json, pareto.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
