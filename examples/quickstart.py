"""Accelerate a DiT sampler with one line, and read what HERO did.

Run: ``python examples/quickstart.py``
"""

import torch

import hero_compile
from hero_compile.measurement import psnr_over_reference_range
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

model = make_dit(DiTConfig(depth=12, hidden=128, heads=4, frames=2, height=16, width=16))
noise = torch.randn(1, 4, 2, 16, 16)

compiled = torch.compile(model, backend="hero", fullgraph=True)
with torch.no_grad():  # inference_mode tensors differ from the noise: Dynamo would recompile once
    reference = flow_matching_sample(model, noise, steps=20)
    video = flow_matching_sample(compiled, noise, steps=20)

graph = hero_compile.stats().graphs[0]
print(f"blocks: {len(graph.blocks)}, deep from block {graph.split}")
print(f"full calls: {graph.full_calls}, cheap calls: {graph.cheap_calls}")
print(f"PSNR vs full compute: {psnr_over_reference_range(video, reference):.1f} dB")
