"""hero-compile in a diffusers pipeline: compile the pipeline's transformer with ``backend="hero"``.

Run: ``python examples/diffusers_pipeline.py`` (needs ``pip install diffusers transformers``; about 2.5 minutes
on 2 CPU cores, most of it compiling). A small CogVideoX transformer with random weights stands in for a real
checkpoint, and prompt embeddings are passed directly, so nothing is downloaded. With a real checkpoint the
only line that matters is the ``torch.compile`` one.
"""

from __future__ import annotations

from functools import partial

import diffusers
import torch

import hero_compile
from hero_compile.measurement import alternated_medians, psnr_over_reference_range

STEPS, REPEATS = 30, 3


def main() -> None:
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=16, num_layers=8, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    ).eval()
    pipe = diffusers.CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                       scheduler=diffusers.CogVideoXDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)  # one bar per call would bury the figures
    prompt, negative = torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    transformers = {
        "eager": transformer,
        "plain Inductor": torch.compile(transformer, backend="inductor", fullgraph=True),
        "hero": torch.compile(transformer, backend="hero", fullgraph=True),  # the one line
    }
    latents: dict[str, torch.Tensor] = {}

    def generate(name: str) -> None:
        pipe.transformer = transformers[name]
        latents[name] = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, num_frames=9, height=128,
                             width=128, num_inference_steps=STEPS, guidance_scale=6.0, output_type="latent",
                             generator=torch.Generator().manual_seed(0)).frames

    runs = {name: partial(generate, name) for name in transformers}
    for run in runs.values():
        run()  # warm-up, untimed: compiles (hero compiles its full and cheap variants)
    seconds = alternated_medians(runs, REPEATS)

    print(f"timing: wall time of one pipeline call ({STEPS} steps, guidance batched, {torch.get_num_threads()} "
          f"threads), after one untimed warm-up call per transformer; median of {REPEATS}, the three alternated")
    for name, median in seconds.items():
        print(f"  {name}: {median:.3f} s")
    print(f"speedup of hero over plain Inductor: {seconds['plain Inductor'] / seconds['hero']:.2f}x")
    print(f"PSNR of hero vs eager: {psnr_over_reference_range(latents['hero'], latents['eager']):.1f} dB")
    graph = hero_compile.stats().graphs[0]
    print(f"blocks {len(graph.blocks)}, split {graph.split} ({graph.split_reason}); calls over all "
          f"{1 + REPEATS} generations: full {graph.full_calls}, cheap {graph.cheap_calls}")


if __name__ == "__main__":
    main()
