"""Clips of the maze as model tensors: RGB and disparity in [-1, 1], actions as integers."""

from __future__ import annotations

import numpy as np
import torch

from hero_world.env import episode, random_actions
from hero_world.model import WorldModelConfig

HELD_OUT_SEEDS = range(1_000_000, 1_000_064)
"""Seeds never used for training: the demo and the quality figures roll out on these."""


def to_model_space(rgb: np.ndarray, depth: np.ndarray) -> torch.Tensor:
    """``(T, H, W, 3)`` colours and ``(T, H, W)`` depths -> ``(4, T, H, W)`` in [-1, 1] (disparity 1/(1+d))."""
    disparity = 1.0 / (1.0 + depth)  # inf (no wall) -> 0
    frames = np.concatenate([rgb, disparity[..., None]], axis=-1)
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() * 2.0 - 1.0


def depth_from_model_space(frames: torch.Tensor) -> torch.Tensor:
    """The depth channel back in scene units (``inf`` where the disparity is 0)."""
    disparity = ((frames[:, 3] + 1.0) / 2.0).clamp(min=1e-6, max=1.0)
    return 1.0 / disparity - 1.0


def training_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, HELD_OUT_SEEDS.start))


def sample_clip(seed: int, rng: np.random.Generator, config: WorldModelConfig, warmup: int = 8
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip of ``config.frames`` frames (after a random walk of up to ``warmup`` steps) and the actions
    that produced its future frames."""
    skip = int(rng.integers(0, warmup + 1))
    actions = random_actions(rng, skip + config.frames - 1)
    rgb, depth = episode(seed, actions, config.resolution)
    frames = to_model_space(rgb[skip:], depth[skip:])
    return frames, torch.from_numpy(actions[skip + config.context_frames - 1 :]).long()


def training_batch(rng: np.random.Generator, batch: int, config: WorldModelConfig
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(context, future, actions)`` for ``batch`` clips of random training mazes."""
    clips = [sample_clip(training_seed(rng), rng, config) for _ in range(batch)]
    frames = torch.stack([c[0] for c in clips])
    actions = torch.stack([c[1] for c in clips])
    return frames[:, :, : config.context_frames], frames[:, :, config.context_frames :], actions
