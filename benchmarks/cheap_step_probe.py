"""Where full steps go and what a cheap step adds, probed eagerly block by block on the step sweep's models.

Run: ``python benchmarks/cheap_step_probe.py --model dit --steps 10 20 30 50`` (and ``--model world``). Every
block of the model (``hero_compile.testing.dit.DiTBlock``: the sweep's DiT and the world model) is wrapped: on a
full step it runs and keeps, per call of the step (guidance), its residual and its two adaLN-gated branches (the
attention projection's and the MLP's outputs before their gates); on a cheap step it returns its input plus

- ``residual``: the kept residual. Summed over the blocks this is the stack's residual: hero's
  ``cache_target="residual", split=0, extrapolation_order=0`` and TeaCache's cheap step (the uniform rows reproduce
  ``benchmarks/schedule_check.py``'s figures for them to 0.01 dB);
- ``gate-rescaled``: each kept branch times its gate at the current timestep, which the block's adaLN computes
  from the conditioning alone.

Full steps: the first, the last and every ``interval``-th (``uniform``, as a fixed interval or TeaCache's constant
spacing on the DiT place them), or as many placed denser early or late (``position = (i / (n - 1)) ** power``).
PSNR against full compute, eager and exact for a schedule: no timing claim.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from step_sweep import MODELS

from hero_compile.measurement import psnr_over_reference_range
from hero_compile.testing.dit import DiTBlock

PLACEMENTS = {"uniform": None, "denser early": 1.5, "denser late": 0.67}
CHEAP_STEPS = ("residual", "gate-rescaled")


def full_steps(steps: int, interval: int, power: float | None) -> frozenset[int]:
    uniform = sorted({*range(0, steps, interval), steps - 1})
    if power is None:
        return frozenset(uniform)
    last = len(uniform) - 1
    return frozenset(round((steps - 1) * (i / last) ** power) for i in range(last + 1))


@contextlib.contextmanager
def probed(blocks: list[DiTBlock], full: frozenset[int], calls_per_step: int, cheap: str) -> Iterator[None]:
    """Blocks run in full on the steps in ``full`` and as ``cheap`` on the others, for the ``with`` body."""
    calls = -1
    kept: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def wrap(index: int, block: DiTBlock) -> Any:
        original = block.forward

        def forward(x: torch.Tensor, c: torch.Tensor, rotary: Any = None) -> torch.Tensor:
            nonlocal calls
            calls += index == 0
            step, slot = divmod(calls, calls_per_step)
            if step in full:
                branches: list[torch.Tensor] = []
                hooks = [module.register_forward_hook(lambda _m, _i, out: branches.append(out))
                         for module in (block.proj, block.mlp)]
                try:
                    out = original(x, c, rotary)
                finally:
                    for hook in hooks:
                        hook.remove()
                attention, mlp = branches
                kept[slot, index] = (attention, mlp, out - x)
                return out
            attention, mlp, residual = kept[slot, index]
            if cheap == "residual":
                return x + residual
            gates = block.ada(F.silu(c)).chunk(6, dim=-1)
            return x + gates[2][:, None] * attention + gates[5][:, None] * mlp

        return forward

    for index, block in enumerate(blocks):
        block.forward = wrap(index, block)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="dit")
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 30, 50])
    parser.add_argument("--intervals", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| steps | interval | placement | full steps | " + " | ".join(CHEAP_STEPS) + " |\n|---|---|---|---|"
          + "---|" * len(CHEAP_STEPS))
    for steps in args.steps:
        bench = MODELS[args.model](steps, torch.device("cpu"))
        blocks = [block for block in bench.model.modules() if isinstance(block, DiTBlock)]
        with torch.no_grad():
            reference = bench.generate(bench.model)
            for interval in args.intervals:
                for placement, power in PLACEMENTS.items():
                    full = full_steps(steps, interval, power)
                    psnr = []
                    for cheap in CHEAP_STEPS:
                        with probed(blocks, full, bench.calls_per_step, cheap):
                            psnr.append(psnr_over_reference_range(bench.generate(bench.model), reference))
                    print(f"| {steps} | {interval} | {placement} | {len(full)} | "
                          + " | ".join(f"{value:.2f}" for value in psnr) + " |", flush=True)


if __name__ == "__main__":
    main()
