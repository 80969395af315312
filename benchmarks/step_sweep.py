"""Step-count sweep (issue 18): fixed and adaptive hero, TeaCache and EasyCache at 10, 20, 30 and 50 steps.

For each model and step count, every method runs at a few settings through the benchmark harness (speed and
quality only: ``run_benchmark(..., facts=False)``); the table keeps, per family, the setting whose speedup is
closest to ``--target`` (about 2x), and, for fixed hero, the interval with the best PSNR among those within 0.25x
of it (the best interval per step count). The plot draws each family's PSNR at the target speedup, on the line
between the two settings on either side of it, against the step count (matched speed). A last table sets each
TeaCache and EasyCache setting against the adaptive hero's (damped residual) at the same speed.

Run: ``python benchmarks/step_sweep.py --models dit --steps 10 20 30 50 --out docs/step_sweep/dit`` (and
``--models world --repeats 2 --out docs/step_sweep/world``; ``world-8`` rolls out eight held-out mazes as one
batch): rows, a Markdown table and a plot in ``--out``;
``--render`` redraws the tables and the plot from ``--out``'s rows without running anything. ``--device cuda`` runs
the DiTs on a GPU and counts each method's device syncs in a generation; there the sweep DiT is launch-bound, and
``--models dit-gpu`` is a DiT sized for a GPU (:data:`GPU_DIT`). Results are written after each step count.
``--only SETTING...`` measures the named settings alone (full compute beside them, for their speedups) and puts
their rows in ``--out``'s rows.json in place of their old ones, or adds them, marked with the command: after a
change that moves only them, or to add a setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hero_bench.harness import REFERENCE, run_benchmark
from hero_bench.host_caches import easycache, teacache
from hero_bench.methods import Method, hero_config_method
from hero_bench.models import BenchModel, benchmark_dit, world_model

from hero_compile.config import HeroConfig
from hero_compile.testing.dit import DiTConfig

SWEEP_DIT = DiTConfig(hidden=128, heads=4, depth=12, frames=1, height=32, width=32)
"""The benchmark DiT's depth at a quarter of its tokens and half its width: the whole sweep fits 2 CPU cores."""
GPU_DIT = DiTConfig(hidden=512, heads=8, depth=12, frames=4, height=64, width=64)
"""Four times the sweep DiT's width and 16 times its tokens (4096): about 0.7 TFLOP a call, so that a GPU computes
rather than waits for launches."""

MODELS: dict[str, Callable[[int, torch.device], BenchModel]] = {
    "dit": lambda steps, device: benchmark_dit(steps=steps, config=SWEEP_DIT, device=device),
    "dit-gpu": lambda steps, device: benchmark_dit(steps=steps, config=GPU_DIT, device=device),
    # One held-out maze, one chunk: the two-maze, two-chunk rollout of the benchmark is 4x longer. CPU only.
    "world": lambda steps, device: world_model(quick=True, steps=steps),
    # Eight held-out mazes as one batch: one maze's PSNR against full compute swings by several dB between
    # placements of as many full steps (docs/results.md, "Session 13").
    "world-8": lambda steps, device: world_model(quick=True, steps=steps, mazes=8),
}
FIXED_INTERVALS = {"dit": (2, 3, 4), "dit-gpu": (2, 3, 4), "world": (2, 3, 4), "world-8": (2, 3, 4)}
# The stack input's distance per step is about 0.5 / steps on the DiT and 0.37 / steps on the world model.
# On the world models 0.025 gives interval 4's full steps at 50 steps, which 0.02 and 0.03 bracket.
ADAPTIVE_THRESHOLDS = {"dit": (0.02, 0.03, 0.06, 0.09, 0.12, 0.2), "dit-gpu": (0.02, 0.03, 0.06, 0.09, 0.12, 0.2),
                       "world": (0.01, 0.02, 0.025, 0.04, 0.08), "world-8": (0.01, 0.02, 0.025, 0.03, 0.04, 0.06, 0.08)}
# Each peer's settings bracket 2x at every step count, so that its PSNR at 2x is read between near settings (with
# l1=0.1 and 0.2 alone TeaCache had 1.76x and 3.15x at 20 steps on the DiT, and EasyCache nothing under 2x at 30
# and 50): the shares of steps each threshold computes, `schedule_check.py --peer` (docs/results.md, "Session 15").
# EasyCache's own default is 0.025.
_DIT_PEERS = {"TeaCache": (0.1, 0.15, 0.2), "EasyCache": (0.025, 0.05, 0.075, 0.1, 0.15, 0.2)}
_WORLD_PEERS = {"TeaCache": (0.1, 0.15, 0.2, 0.3), "EasyCache": (0.05, 0.1, 0.15, 0.2, 0.3)}
PEER_THRESHOLDS = {"dit": _DIT_PEERS, "dit-gpu": _DIT_PEERS, "world": _WORLD_PEERS, "world-8": _WORLD_PEERS}
FIXED, ADAPTIVE = "hero fixed", "hero adaptive"


HERO_FINAL = HeroConfig(final_full_steps=1)
"""TeaCache and EasyCache are given the step count and compute the last step; hero learns it from the previous
sampling loop (never reset, as under a pipeline called again and again) and computes it too."""
CHEAP_STEPS = {"": HERO_FINAL, ", residual": HERO_FINAL.replace(cache_target="residual", split=0, warmup_steps=1,
                                                               extrapolation_damping=0.5)}
"""hero's cheap steps: its defaults (the stack's output extrapolated, order 1, two warm-up steps), and the stack's
residual added to the current input, as TeaCache and EasyCache add it, but extrapolated linearly in the timestep
with half the slope (``extrapolation_damping=0.5``; order 0 while one full step is all the history, so one warm-up
step, as TeaCache forces). Session 10's sweep ran the peers' own cheap step (order 0) and tied TeaCache on the DiT
(docs/results.md)."""


def methods(model: str, steps: int) -> list[Method]:
    """Fixed and adaptive hero with both cheap steps, TeaCache and EasyCache, for ``model`` at ``steps`` steps."""
    fixed, adaptive = [], []
    for suffix, config in CHEAP_STEPS.items():
        fixed += [hero_config_method(f"hero interval={n}{suffix}", FIXED + suffix, config.replace(interval=n),
                                     f"hero backend, fixed schedule{suffix}, last step full", reset=False)
                  for n in FIXED_INTERVALS[model]]
        adaptive += [hero_config_method(f"hero adaptive l1={t}{suffix}", ADAPTIVE + suffix,
                                        config.replace(schedule="adaptive", adaptive_threshold=t),
                                        f"hero backend, adaptive schedule (in-graph estimate, read one call later)"
                                        f"{suffix}, last step full", reset=False)
                     for t in ADAPTIVE_THRESHOLDS[model]]
    peers = PEER_THRESHOLDS[model]
    return [*fixed, *adaptive, *(teacache(t, steps) for t in peers["TeaCache"]),
            *(easycache(t, steps) for t in peers["EasyCache"])]


def at_target(rows: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per model, step count and family, the row nearest ``target``; for fixed hero the best PSNR within 0.25x of
    the nearest speedup."""
    families: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["method"] != REFERENCE:
            families[row["model"], row["steps"], row["family"]].append(row)
    chosen = []
    for (_, _, family), members in families.items():
        nearest = min(members, key=lambda r: abs(r["speedup"] - target))
        if family.startswith(FIXED):
            close = [r for r in members if abs(r["speedup"] - nearest["speedup"]) <= 0.25]
            nearest = max(close, key=lambda r: r["psnr_vs_full"] or float("inf"))
        chosen.append(nearest)
    return chosen


def _quality(row: dict[str, Any]) -> str:
    text = f"{row['psnr_vs_full']:.1f}" if row["psnr_vs_full"] is not None else "exact"
    return text + (f" ({row['psnr_vs_truth']:.2f})" if "psnr_vs_truth" in row else "")


def markdown(rows: list[dict[str, Any]], chosen: list[dict[str, Any]], command: str, target: float = 2.0) -> str:
    """The settings nearest the target per step count, each family's PSNR at the target, then every setting:
    speedup and PSNR vs full compute (in parentheses, PSNR vs ground truth where the model has one), and on CUDA the
    device syncs of a generation."""
    # On CUDA the harness counts each method's device syncs over one generation.
    syncs = all("syncs_per_generation" in r for r in rows)
    apart = sorted({r["remeasured_with"] for r in rows if "remeasured_with" in r})
    lines = [f"Regenerate with `{command}`.",
             *(f"Settings measured on their own, full compute beside them, with `{c}`." for c in apart),
             "", "| model | steps | family | setting | speedup | PSNR |"
             + (" syncs / generation |" if syncs else ""), "|---|---|---|---|---|---|" + ("---|" if syncs else "")]
    lines += [f"| {r['model']} | {r['steps']} | {r['family']} | {r['method']} | {r['speedup']:.2f}x | "
              f"{_quality(r)} |" + (f" {r['syncs_per_generation']} |" if syncs else "") for r in chosen]
    steps = sorted({r["steps"] for r in rows})
    lines += ["", f"PSNR at {target:g}x, on the line between each family's settings either side (the plot; empty where "
              "none is on one side):", "", "| model | family | " + " | ".join(f"{n} steps" for n in steps) + " |",
              "|---|---|" + "---|" * len(steps)]
    lines += [f"| {model} | {family} | " + " | ".join("" if by_steps.get(n) is None else f"{by_steps[n]:.2f}"
                                                     for n in steps) + " |"
              for (model, family), by_steps in psnr_at_speed_per_family(rows, target).items()]
    lines += ["", "Every setting, speedup / PSNR:", "", "| model | setting | " + " | ".join(f"{n} steps" for n in steps)
              + " |", "|---|---|" + "---|" * len(steps)]
    cells: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for r in rows:
        cells[r["model"], r["method"]][r["steps"]] = f"{r['speedup']:.2f}x / {_quality(r)}"
    lines += [f"| {model} | {method} | " + " | ".join(by_steps.get(n, "") for n in steps) + " |"
              for (model, method), by_steps in cells.items()]
    lines += ["", f"Each peer setting against {COMPARED} (PSNR vs full compute, dB; a setting within "
              f"{SAME_SPEED:.0%} of the peer's speed, else the line between the two that bracket it):", "",
              "| model | steps | peer | peer | hero | hero - peer |", "|---|---|---|---|---|---|",
              *against_peers(rows)]
    return "\n".join(lines) + "\n"


PEERS = ("TeaCache", "EasyCache")
COMPARED = ADAPTIVE + ", residual"
SAME_SPEED = 0.03
"""Speedups this close (relative) are one speed: the spread of alternated generations on 2 cores."""


def against_peers(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: each peer setting against the adaptive hero (damped residual) of its model and step count:
    hero's setting at the same speed (within ``SAME_SPEED``) if there is one, else hero's PSNR on the line between
    the two settings that bracket the peer's speed ("between"), else hero's best setting faster than the peer."""
    lines = []
    for peer in rows:
        if peer["family"] not in PEERS or skipped_nothing(peer):
            continue
        hero = [r for r in rows if (r["model"], r["steps"], r["family"]) == (peer["model"], peer["steps"], COMPARED)
                and not skipped_nothing(r)]
        speed, between = peer["speedup"], psnr_at_speed(hero, peer["speedup"])
        same = [r for r in hero if abs(r["speedup"] / speed - 1) <= SAME_SPEED]
        faster = [r for r in hero if r["speedup"] > speed]
        if same:
            match = min(same, key=lambda r: abs(r["speedup"] - speed))
        elif between is not None:
            match = None
        elif faster:
            match = max(faster, key=lambda r: r["psnr_vs_full"])
        else:
            continue
        psnr = between if match is None else match["psnr_vs_full"]
        text = (f"between: {between:.2f}" if match is None else
                f"{match['method']}: {match['speedup']:.2f}x / {psnr:.2f}" + ("" if same else ", faster"))
        lines.append(f"| {peer['model']} | {peer['steps']} | {peer['method']} | {speed:.2f}x / "
                     f"{peer['psnr_vs_full']:.2f} | {text} | {psnr - peer['psnr_vs_full']:+.2f} |")
    return lines


ROUNDING_PSNR = 120.0
"""dB beyond which an output differs from full compute's by rounding alone: other kernels computed every step (on
the GPU a setting that skipped nothing measured 161 dB; the closest setting that skipped a step, 83 dB)."""


def skipped_nothing(row: dict[str, Any]) -> bool:
    """Whether a setting computed every step: its output equals full compute's, or differs by rounding alone."""
    return row["psnr_vs_full"] is None or row["psnr_vs_full"] > ROUNDING_PSNR


def psnr_at_speed(rows: list[dict[str, Any]], target: float) -> float | None:
    """PSNR at ``target`` speedup on the line between the two settings whose speedups bracket it (``None`` when none
    do); settings that skipped nothing (:func:`skipped_nothing`) are left out."""
    points = sorted((r["speedup"], r["psnr_vs_full"]) for r in rows if not skipped_nothing(r))
    for (slow, slow_psnr), (fast, fast_psnr) in itertools.pairwise(points):
        if slow <= target <= fast:
            return slow_psnr + (target - slow) / (fast - slow) * (fast_psnr - slow_psnr)
    return None


def psnr_at_speed_per_family(rows: list[dict[str, Any]], target: float
                             ) -> dict[tuple[str, str], dict[int, float | None]]:
    """Per model and family, its PSNR at ``target`` speedup at each step count (:func:`psnr_at_speed`)."""
    settings: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["method"] != REFERENCE:
            settings[r["model"], r["family"]][r["steps"]].append(r)
    return {key: {steps: psnr_at_speed(members, target) for steps, members in sorted(by_steps.items())}
            for key, by_steps in settings.items()}


def plot(rows: list[dict[str, Any]], target: float, path: Path) -> None:
    """Per model, each family's PSNR at ``target`` speedup (:func:`psnr_at_speed`) against the step count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    per_family = psnr_at_speed_per_family(rows, target)
    for axis, model in zip(axes[0], models):
        for (family_model, family), by_steps in per_family.items():
            kept = [(steps, psnr) for steps, psnr in by_steps.items() if psnr is not None and family_model == model]
            axis.plot([steps for steps, _ in kept], [psnr for _, psnr in kept], marker="o", label=family)
        axis.set(title=f"{model}: PSNR at {target:g}x, between the settings on either side",
                 xlabel="denoising steps", ylabel="PSNR vs full compute (dB)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["dit"], choices=sorted(MODELS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 30, 50])
    parser.add_argument("--lowering", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=2.0)
    # One thread: on a machine shared with other jobs, two threads contend and time far worse.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/step_sweep"))
    parser.add_argument("--render", action="store_true", help="redraw the tables and plot from --out's rows.json")
    parser.add_argument("--only", nargs="+", metavar="SETTING",
                        help="measure these settings alone; their rows replace their old ones in --out's rows.json")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"),
                        help="where the DiTs run (cuda: each generation ends with a synchronize, and the device "
                        "syncs of one generation per method are counted); the world model runs on the CPU")
    args = parser.parse_args()
    if args.device.type != "cpu" and any(model.startswith("world") for model in args.models):
        parser.error(f"--device {args.device} runs the DiTs only; the world model's rollout is built on the CPU")
    if args.only:
        known = {m.name for model in args.models for steps in args.steps for m in methods(model, steps)}
        if unknown := sorted(set(args.only) - known):
            parser.error(f"--only {unknown}: not settings of these models and steps; they are {sorted(known)}")
    rows: list[dict[str, Any]] = (json.loads((args.out / "rows.json").read_text()) if args.render or args.only
                                  else [])
    command = "python benchmarks/step_sweep.py " + " ".join(
        [f"--models {' '.join(args.models)}", f"--steps {' '.join(map(str, args.steps))}",
         f"--lowering {args.lowering}", f"--repeats {args.repeats}", f"--threads {args.threads}", f"--out {args.out}",
         *([f"--device {args.device}"] if args.device.type != "cpu" else [])])
    only_command = command + " --only " + " ".join(f'"{name}"' for name in args.only or ())
    for model in () if args.render else args.models:
        for steps in args.steps:
            chosen = [m for m in methods(model, steps) if not args.only or m.name in args.only]
            if not chosen:
                continue
            bench = MODELS[model](steps, args.device)
            measured = [row | {"model": model, "steps": steps} for row in run_benchmark(
                bench, chosen, lowering=args.lowering, repeats=args.repeats, threads=args.threads, facts=False)]
            rows = remeasured(rows, measured, only_command) if args.only else rows + measured
            # After each step count, so that a run cut short keeps what it measured.
            write_results(rows, args.target, args.out, command)
    print(write_results(rows, args.target, args.out, command))


def remeasured(rows: list[dict[str, Any]], measured: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    """``rows`` with each of ``measured``'s settings (but full compute, the speedups' reference) in place of its row,
    or added after them, marked as measured with ``command``."""
    new = {(r["model"], r["steps"], r["method"]): r | {"remeasured_with": command}
           for r in measured if r["method"] != REFERENCE}
    kept = [new.pop((r["model"], r["steps"], r["method"]), r) for r in rows]
    return kept + list(new.values())


def write_results(rows: list[dict[str, Any]], target: float, out: Path, command: str) -> str:
    """``rows.json``, ``step_sweep.md`` and ``step_sweep.png`` in ``out``; returns the Markdown."""
    chosen = at_target(rows, target)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows, chosen, command, target)
    (out / "step_sweep.md").write_text(text)
    plot(rows, target, out / "step_sweep.png")
    return text


if __name__ == "__main__":
    main()
