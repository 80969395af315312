"""Host time of the adaptive schedule's eager work, and what it costs a generation against the fixed schedule.

Run: ``python benchmarks/adaptive_host_cost.py --device cuda`` (``--device cpu`` runs the same on the CPU).

A full call under ``schedule="adaptive"`` measures its stack input's distance from the previous full step eagerly
(``hero_compile.adaptive.relative_l1_distance``), and every full call checks its cached features for NaN and
infinities (``FiniteFlag``). On a GPU each eager op is a dispatch and a kernel launch of host time; a small model's
call is short enough for them to show. Printed:

- host microseconds per call of each helper (mean of 2000 calls, launches only), next to the pre-session-12 forms
  (``sum|x|`` chains and ``isfinite``, kept below as :func:`previous_distance` and :func:`previous_all_finite`);
- milliseconds per generation (median of 9, alternated) of the step sweep's DiT at 20 steps under the fixed
  schedule (interval 4) and the adaptive one (threshold 0.09), both with the sweep's residual cheap step, which
  run the same full steps there; once with the runtime's helpers and once with the previous ones swapped in.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from hero_bench.cuda import synchronize
from step_sweep import CHEAP_STEPS, SWEEP_DIT

import hero_compile
from hero_compile import adaptive, runtime
from hero_compile.measurement import alternated_medians
from hero_compile.testing.dit import flow_matching_sample, make_dit


def previous_distance(values: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> torch.Tensor:
    """The distance as computed before session 12: 11 ops for one stream."""
    moved = torch.stack([torch.sum(torch.abs(v - r), dtype=torch.float32) for v, r in zip(values, references)])
    size = torch.stack([torch.sum(torch.abs(r), dtype=torch.float32) for r in references])
    return moved.sum() / size.sum().clamp(min=torch.finfo(torch.float32).tiny)


def previous_all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """The finite check as computed before session 12 (``isfinite`` is 4 kernels)."""
    return torch.isfinite(tensor).all()


def host_microseconds(fn: Callable[[], Any], device: torch.device, calls: int = 2000) -> float:
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    seconds = time.perf_counter() - start
    synchronize(device)
    return seconds / calls * 1e6


@contextmanager
def helpers(distance: Callable[..., torch.Tensor], all_finite: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The runtime's eager helpers swapped for ``distance`` and ``all_finite`` (the graphs are not affected)."""
    kept = runtime.relative_l1_distance, runtime._all_finite
    runtime.relative_l1_distance, runtime._all_finite = distance, all_finite
    try:
        yield
    finally:
        runtime.relative_l1_distance, runtime._all_finite = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=torch.device, default=torch.device("cuda"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = args.device
    tokens = SWEEP_DIT.tokens
    x, reference = (torch.randn(1, tokens, SWEEP_DIT.hidden, device=device) for _ in range(2))
    print(f"host us per call ({device}, one stream of 1 x {tokens} x {SWEEP_DIT.hidden}):")
    for name, fn in {
        "relative_l1_distance": lambda: adaptive.relative_l1_distance([x], [reference]),
        "previous distance": lambda: previous_distance([x], [reference]),
        "finite check": lambda: runtime._all_finite(x),
        "previous finite check": lambda: previous_all_finite(x),
        "FiniteFlag (check and host copy)": lambda: runtime.FiniteFlag([x]),
        "one add (a single kernel)": lambda: x.add(reference),
    }.items():
        print(f"  {name}: {host_microseconds(fn, device):.1f}")

    model = make_dit(SWEEP_DIT).to(device)
    noise = torch.randn(1, SWEEP_DIT.channels, SWEEP_DIT.frames, SWEEP_DIT.height, SWEEP_DIT.width,
                        generator=torch.Generator().manual_seed(0)).to(device)
    residual = CHEAP_STEPS[", residual"]
    configs = {"fixed, interval 4": residual.replace(interval=4),
               "adaptive, threshold 0.09": residual.replace(schedule="adaptive", adaptive_threshold=0.09)}
    backends = {name: hero_compile.backend(config) for name, config in configs.items()}
    compiled = {name: torch.compile(model, backend=backend) for name, backend in backends.items()}

    def generation(name: str) -> None:
        flow_matching_sample(compiled[name], noise, args.steps)
        synchronize(device)

    with torch.no_grad():
        for name in compiled:  # compiles, then teaches hero the loop's length (final_full_steps)
            generation(name)
            generation(name)
        for label, swapped in {"runtime's helpers": (adaptive.relative_l1_distance, runtime._all_finite),
                               "previous helpers": (previous_distance, previous_all_finite)}.items():
            with helpers(*swapped):
                seconds = alternated_medians({name: partial(generation, name) for name in compiled}, repeats=9)
            medians = {name: 1e3 * value for name, value in seconds.items()}
            fixed, adaptive_ms = medians.values()
            print(f"{label}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items())
                  + f"; adaptive - fixed {adaptive_ms - fixed:+.2f} ms ({adaptive_ms / fixed - 1:+.1%})")
    print("cheap calls:", {name: backend.stats().cheap_calls for name, backend in backends.items()})


if __name__ == "__main__":
    main()
