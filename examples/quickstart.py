"""Accelerate a DiT sampler with one line, time it fairly against plain Inductor, and read what HERO did.

Run: ``python examples/quickstart.py`` (about 2 minutes on 2 CPU cores, most of it compiling).
"""

from functools import partial

import torch

import hero_compile
from hero_compile.measurement import alternated_medians, psnr_over_reference_range
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

STEPS, REPEATS = 20, 5

model = make_dit(DiTConfig(depth=12, hidden=128, heads=4, frames=2, height=16, width=16))
noise = torch.randn(1, 4, 2, 16, 16)
compiled = {
    "plain Inductor": torch.compile(model, backend="inductor", fullgraph=True),
    "hero": torch.compile(model, backend="hero", fullgraph=True),  # the one line
}
videos: dict[str, torch.Tensor] = {}


def generate(name: str) -> None:
    videos[name] = flow_matching_sample(compiled[name], noise, steps=STEPS)


with torch.no_grad():  # inference_mode tensors differ from the noise: Dynamo would recompile once
    reference = flow_matching_sample(model, noise, steps=STEPS)
    runs = {name: partial(generate, name) for name in compiled}
    for run in runs.values():
        run()  # warm-up, untimed: compiles (hero compiles its full and cheap variants)
    seconds = alternated_medians(runs, REPEATS)

print(f"timing: wall time of one {STEPS}-step generation (batch 1, {torch.get_num_threads()} threads), after one "
      f"untimed warm-up generation per model; median of {REPEATS}, the two models alternated")
for name, median in seconds.items():
    print(f"  {name}: {median:.3f} s")
print(f"speedup of hero over plain Inductor: {seconds['plain Inductor'] / seconds['hero']:.2f}x")

graph = hero_compile.stats().graphs[0]
print(f"blocks: {len(graph.blocks)}, deep from block {graph.split}")
print(f"calls over all {1 + REPEATS} generations: {graph.full_calls} full (every block), "
      f"{graph.cheap_calls} cheap (deep blocks extrapolated)")
print(f"PSNR of hero vs eager full compute: {psnr_over_reference_range(videos['hero'], reference):.1f} dB")
