"""hero-compile in a diffusers pipeline: compile the pipeline's transformer with ``backend="hero"``.

Run: ``python examples/diffusers_pipeline.py`` (needs ``pip install diffusers transformers``). A small
CogVideoX transformer with random weights stands in for a real checkpoint, and prompt embeddings are passed
directly, so nothing is downloaded. With a real checkpoint the only line that matters is the
``torch.compile`` one.
"""

from __future__ import annotations

import time

import diffusers
import torch

import hero_compile
from hero_compile.measurement import psnr_over_reference_range


def main() -> None:
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=16, num_layers=8, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    ).eval()
    pipe = diffusers.CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                       scheduler=diffusers.CogVideoXDDIMScheduler())
    prompt, negative = torch.randn(1, 8, 16), torch.randn(1, 8, 16)

    def generate() -> torch.Tensor:
        return pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, num_frames=9, height=128, width=128,
                    num_inference_steps=30, guidance_scale=6.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames

    start = time.perf_counter()
    reference = generate()
    eager_seconds = time.perf_counter() - start

    pipe.transformer = torch.compile(transformer, backend="hero", fullgraph=True)
    generate()  # compiles, and measures the blocks' variability profile in the first steps
    start = time.perf_counter()
    latents = generate()
    print(f"eager {eager_seconds:.2f} s, hero {time.perf_counter() - start:.2f} s; "
          f"PSNR of hero vs eager {psnr_over_reference_range(latents, reference):.1f} dB")
    graph = hero_compile.stats().graphs[0]
    print(f"blocks {len(graph.blocks)}, split {graph.split} ({graph.split_reason}); "
          f"calls full {graph.full_calls}, cheap {graph.cheap_calls}")


if __name__ == "__main__":
    main()
