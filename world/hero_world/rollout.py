"""Autoregressive rollouts of the world model, chunk by chunk, with classifier-free guidance on the action."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hero_compile.testing.sampling import Velocity, euler_flow_matching
from hero_world.data import to_model_space
from hero_world.env import episode, random_actions
from hero_world.model import NULL_ACTION, WorldModelConfig

GUIDANCE = 1.5
"""Classifier-free guidance on the action. Aether uses 3; this model, which regresses the clean frames, scores
best against the ground truth at 1.5 (the figures per scale are in docs/world_model.md), with the two calls per
step that guidance costs real world models, which the caches must handle."""

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Scenario:
    """A held-out maze, the actions taken in it and the frames they produce (model space, ``(4, T, H, W)``)."""

    seed: int
    actions: torch.Tensor
    frames: torch.Tensor


def scenario(seed: int, chunks: int, config: WorldModelConfig) -> Scenario:
    """Ground truth for ``chunks`` chunks after the context frames, from a seeded exploration policy."""
    rng = np.random.default_rng(seed)
    actions = random_actions(rng, config.context_frames - 1 + chunks * config.future_frames)
    rgb, depth = episode(seed, actions, config.resolution)
    return Scenario(seed, torch.from_numpy(actions).long(), to_model_space(rgb, depth))


def _guided_velocity(denoiser: Denoiser, context: torch.Tensor, actions: torch.Tensor, guidance: float) -> Velocity:
    """The velocity of a chunk's flow: the denoiser's given the actions; with ``guidance != 1``, the denoiser's
    given no action too, and the conditional velocity extrapolated from it ``guidance`` times."""
    no_action = torch.full_like(actions, NULL_ACTION)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conditional = denoiser(x, context, actions, t)
        if guidance == 1.0:
            return conditional
        unconditional = denoiser(x, context, no_action, t)
        return unconditional + guidance * (conditional - unconditional)

    return velocity


def rollout(
    denoiser: Denoiser,
    context: torch.Tensor,
    actions: torch.Tensor,
    config: WorldModelConfig,
    steps: int = 30,
    guidance: float = GUIDANCE,
    seed: int = 0,
) -> torch.Tensor:
    """Predict the frames that ``actions`` lead to, ``future_frames`` at a time, each chunk denoised in
    ``steps`` Euler steps of the flow (t from 1 to 0) and fed back as context.

    ``context``: ``(batch, 4, context_frames, H, W)``; ``actions``: ``(batch, chunks * future_frames)``.
    With ``guidance != 1`` the denoiser runs twice per step (action, then no action), as world models do.
    """
    generator = torch.Generator().manual_seed(seed)
    context = context.contiguous()
    b, f = context.shape[0], config.future_frames
    shape = (b, config.channels, f, config.resolution, config.resolution)
    predicted = []
    for chunk in range(actions.shape[1] // f):
        # Contiguous inputs: a strided slice would make Dynamo specialize (and recompile) on its strides.
        chunk_actions = actions[:, chunk * f : (chunk + 1) * f].contiguous()
        velocity = _guided_velocity(denoiser, context, chunk_actions, guidance)
        x = euler_flow_matching(velocity, torch.randn(shape, generator=generator), steps)
        predicted.append(x)
        context = torch.cat([context, x], dim=2)[:, :, -config.context_frames :].contiguous()
    return torch.cat(predicted, dim=2)


def rollout_scenarios(denoiser: Denoiser, scenarios: list[Scenario], config: WorldModelConfig,
                      steps: int = 30, guidance: float = GUIDANCE) -> torch.Tensor:
    """Rollouts of several scenarios as one batch: ``(batch, 4, chunks * future_frames, H, W)``."""
    context = torch.stack([s.frames[:, : config.context_frames] for s in scenarios])
    actions = torch.stack([s.actions[config.context_frames - 1 :] for s in scenarios])
    return rollout(denoiser, context, actions, config, steps, guidance)
