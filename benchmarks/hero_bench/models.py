"""The models the benchmark runs: each with its sampler (one whole generation) and its quality metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

Metrics = Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]


@dataclass
class BenchModel:
    name: str
    description: str
    model: nn.Module
    generate: Callable[[Callable[..., Any]], torch.Tensor]
    """One whole generation with the given denoiser in place of the model."""
    depth: int
    steps: int
    """Denoising steps of one sampling loop (a world-model rollout runs one loop per chunk)."""
    calls_per_step: int
    metrics: Metrics
    """``(PSNR, SSIM)`` of an output against a reference output."""
    ground_truth: torch.Tensor | None = None


def latent_metrics(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """PSNR and SSIM of ``(batch, channels, frames, H, W)`` latents, frame by frame, over the reference's range."""
    def frames(x: torch.Tensor) -> torch.Tensor:
        return x.float().transpose(1, 2).flatten(0, 1)

    value_range = float(reference.max() - reference.min())
    psnr = peak_signal_noise_ratio(frames(estimate), frames(reference), data_range=value_range)
    ssim = structural_similarity_index_measure(frames(estimate), frames(reference), data_range=value_range)
    assert isinstance(ssim, torch.Tensor)
    return float(psnr), float(ssim)


def benchmark_dit(quick: bool = False, steps: int = 20, config: DiTConfig | None = None,
                  device: torch.device | str = "cpu") -> BenchModel:
    """The benchmark DiT (12 blocks, 1024 tokens), a 4-block 64-token one with ``quick``, or one of ``config``;
    built on the CPU (the same weights and noise on every device), then moved to ``device``."""
    if config is None:
        config = DiTConfig(hidden=64, heads=2, depth=4, frames=1, height=16, width=16) if quick else DiTConfig()
    model = make_dit(config).to(device)
    noise = torch.randn(1, config.channels, config.frames, config.height, config.width,
                        generator=torch.Generator().manual_seed(0)).to(device)
    return BenchModel(
        name="dit",
        description=f"benchmark DiT: {config.depth} blocks, hidden {config.hidden}, {config.tokens} tokens, "
        f"{steps} Euler steps of rectified flow",
        model=model,
        generate=lambda denoiser: flow_matching_sample(denoiser, noise, steps),
        depth=config.depth,
        steps=steps,
        calls_per_step=1,
        metrics=latent_metrics,
    )


def world_model(quick: bool = False, weights: Path | None = None, steps: int | None = None,
                mazes: int | None = None) -> BenchModel:
    """The bundled world model rolling out held-out mazes as one batch with guidance (two calls per step);
    ``steps`` per chunk (10 with ``quick``, else 30) and ``mazes`` (1 with ``quick``, else 2), unless given."""
    from hero_world.checkpoint import WEIGHTS_DIR, load_world_model
    from hero_world.data import HELD_OUT_SEEDS
    from hero_world.demo import psnr_rgb, ssim_rgb
    from hero_world.rollout import GUIDANCE, rollout_scenarios, scenario

    default_mazes, chunks, default_steps = (1, 1, 10) if quick else (2, 2, 30)
    seeds, steps = mazes or default_mazes, steps or default_steps
    model = load_world_model(weights or WEIGHTS_DIR)
    config = model.config
    scenarios = [scenario(seed, chunks, config) for seed in HELD_OUT_SEEDS[:seeds]]
    truth = torch.stack([s.frames[:, config.context_frames :] for s in scenarios])
    return BenchModel(
        name="world",
        description=f"bundled world model: {seeds} held-out mazes, {chunks} chunks of {config.future_frames} "
        f"frames, {steps} steps per chunk, guidance {GUIDANCE} (two calls per step)",
        model=model,
        generate=lambda denoiser: rollout_scenarios(denoiser, scenarios, config, steps),
        depth=config.depth,
        steps=steps,
        calls_per_step=2,
        metrics=lambda estimate, reference: (psnr_rgb(estimate, reference), ssim_rgb(estimate, reference)),
        ground_truth=truth,
    )


def smooth_time_embedding(model: Any, steps: int, max_change: float = 0.1) -> None:
    """Zero the timestep-embedding inputs that change by more than ``max_change`` per step of a ``steps``-step
    schedule. Random weights read every sinusoid, and the fast ones decorrelate the conditioning from one step
    to the next; a trained model's features drift smoothly, which is what caching methods rely on."""
    timesteps = torch.linspace(1000.0, 0.0, steps + 1)
    with torch.no_grad():
        sinusoids = model.time_proj(timesteps)
        change = (sinusoids[1:] - sinusoids[:-1]).abs().mean(dim=0)
        model.time_embedding.linear_1.weight[:, change > max_change] = 0.0


def cogvideox(quick: bool = False, steps: int = 30) -> BenchModel:
    """diffusers' CogVideoX (the architecture of the Aether world model) built small, with diffusers' random
    initialisation made to drift smoothly between steps (:func:`smooth_time_embedding`)."""
    import diffusers

    steps = 10 if quick else steps
    layers, frames, side = (4, 2, 8) if quick else (8, 4, 32)
    torch.manual_seed(0)
    model: Any = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=64,
        text_embed_dim=32, num_layers=layers, sample_width=side, sample_height=side,
        sample_frames=4 * (frames - 1) + 1, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
    )
    model.eval()
    smooth_time_embedding(model, steps)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, frames, 4, side, side, generator=generator)
    text = torch.randn(1, 16, 32, generator=generator)

    def generate(denoiser: Callable[..., Any]) -> torch.Tensor:
        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return denoiser(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]

        return flow_matching_sample(velocity, noise, steps)

    tokens = frames * (side // 2) ** 2
    return BenchModel(
        name="cogvideox",
        description=f"diffusers CogVideoXTransformer3DModel: {layers} blocks, inner dim 64, {tokens} video + 16 "
        f"text tokens, smoothly drifting random weights, {steps} Euler steps of rectified flow",
        model=model,
        generate=generate,
        depth=layers,
        steps=steps,
        calls_per_step=1,
        metrics=lambda estimate, reference: latent_metrics(estimate.transpose(1, 2), reference.transpose(1, 2)),
    )
