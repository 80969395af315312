"""The bundled world model as an analysis target: ``hero-compile analyze`` with no argument analyzes this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hero_world.checkpoint import WEIGHTS_DIR, load_world_model
from hero_world.data import HELD_OUT_SEEDS
from hero_world.model import WorldModel
from hero_world.rollout import GUIDANCE, rollout, scenario


def world_model_target(
    seeds: int = 2, steps: int = 30, guidance: float = GUIDANCE, weights: Path = WEIGHTS_DIR
) -> tuple[WorldModel, tuple[torch.Tensor, ...], Any]:
    """``(model, example_inputs, sampler)``: one chunk of held-out rollouts with guidance is one generation."""
    model = load_world_model(weights)
    config = model.config
    scenarios = [scenario(seed, 1, config) for seed in HELD_OUT_SEEDS[:seeds]]
    context = torch.stack([s.frames[:, : config.context_frames] for s in scenarios]).contiguous()
    actions = torch.stack([s.actions[config.context_frames - 1 :] for s in scenarios]).contiguous()
    noisy = torch.zeros(len(scenarios), config.channels, config.future_frames, config.resolution, config.resolution)
    example_inputs = (noisy, context, actions, torch.full((len(scenarios),), 1000.0))

    def sampler(denoiser: Any) -> torch.Tensor:
        return rollout(denoiser, context, actions, config, steps, guidance)

    return model, example_inputs, sampler
