"""The action-conditioned video diffusion transformer of the bundled world model.

Context frames (clean) and noisy future frames are patchified over (frames, height, width) into one token
sequence with a fixed sine-cosine embedding of each token's (frame, row, column), as in DiT and CogVideoX-2B,
and queries and keys are rotated by a 3D rotary embedding of the same indices, as in CogVideoX-5B, Wan and
HunyuanVideo. With rotary positions an attention score depends on how far apart two tokens are, so "the
content three patches to the left in the last frame" (a turn) is one pattern wherever it happens: a model
trained for an hour on 2 cores learns it sooner (docs/world_model.md says what each version changed and
what it gained).
Each frame's tokens also carry a learned embedding of its role (context) or of the action that led to it
(future), and the actions also join the timestep in the adaLN conditioning. Blocks are the DiT blocks of
``hero_compile.testing.dit`` (fused SDPA, adaLN-Zero). Channels are RGB and disparity (as Aether predicts
colour and depth).

The network predicts the clean future frames as a change from the last context frame (x-prediction, trained
with a plain MSE on the frames), and ``forward`` turns that into the flow-matching velocity the sampler
integrates. The untrained model thus rolls out as "copy the last frame" and training only has to learn what
changes; regressing the frames rather than the noise gives the conditional mean, which is what a
deterministic environment asks for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hero_compile.testing.dit import DiTBlock, modulate, patchify, timestep_embedding, unpatchify
from hero_world.env import NUM_ACTIONS

MIN_TIME = 1e-3
"""Noise levels below this are treated as this one when converting the clean prediction to a velocity."""

NULL_ACTION = NUM_ACTIONS
"""The action index used for the unconditional branch of classifier-free guidance (and action dropout)."""


@dataclass(frozen=True)
class WorldModelConfig:
    channels: int = 4
    resolution: int = 32
    context_frames: int = 2
    future_frames: int = 2
    patch: int = 2
    hidden: int = 128
    heads: int = 4
    depth: int = 8
    mlp_ratio: float = 4.0

    @property
    def frames(self) -> int:
        return self.context_frames + self.future_frames

    @property
    def tokens_per_frame(self) -> int:
        return (self.resolution // self.patch) ** 2

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _grid_angles(sizes: tuple[int, int, int], count: int) -> list[torch.Tensor]:
    """For each axis of the (frame, row, column) grid, every token's angles ``(frames * rows * columns, n)``: its
    index on that axis times ``n`` frequencies from 1 down towards 1/100. Of the ``count`` frequencies a quarter
    go to the frame and three eighths to each spatial axis."""
    frame = count // 4
    row = (count - frame) // 2
    f, h, w = sizes
    axes = []
    for size, n, view in zip(sizes, (frame, row, count - frame - row), ((f, 1, 1), (1, h, 1), (1, 1, w))):
        frequencies = 1.0 / 100.0 ** (torch.arange(n, dtype=torch.float64) / n)
        angles = torch.arange(size, dtype=torch.float64)[:, None] * frequencies[None]
        axes.append(angles.reshape(*view, n).expand(f, h, w, n).reshape(f * h * w, n))
    return axes


def sincos_position_embedding(sizes: tuple[int, int, int], dim: int) -> torch.Tensor:
    """``(1, frames * rows * columns, dim)``: sines and cosines of the frame, row and column indices."""
    axes = _grid_angles(sizes, dim // 2)
    return torch.cat([torch.cat([a.sin(), a.cos()], dim=-1) for a in axes], dim=-1)[None].float()


def rotary_tables(sizes: tuple[int, int, int], head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(frames * rows * columns, head_dim)`` of a 3D rotary embedding (each channel pair rotates
    with one axis's index), so that attention scores depend on how far apart two tokens are (a turn shifts the
    view by whole patches)."""
    angles = torch.cat(_grid_angles(sizes, head_dim // 2), dim=-1).repeat_interleave(2, dim=-1)
    return angles.cos().float(), angles.sin().float()


class WorldModel(nn.Module):
    """``forward(noisy_future, context, actions, timestep)``: frames are ``(batch, channels, frames, H, W)``,
    ``actions`` ``(batch, future_frames)`` integers (``NULL_ACTION`` for none), ``timestep`` ``(batch,)`` in
    [0, 1000]. Returns the velocity of the future frames."""

    def __init__(self, config: WorldModelConfig = WorldModelConfig()) -> None:
        super().__init__()
        self.config = c = config
        patch_dim = c.channels * c.patch * c.patch
        self.patch_embed = nn.Linear(patch_dim, c.hidden)
        grid = c.resolution // c.patch
        self.register_buffer("pos_embed", sincos_position_embedding((c.frames, grid, grid), c.hidden), persistent=False)
        rotary_cos, rotary_sin = rotary_tables((c.frames, grid, grid), c.hidden // c.heads)
        self.register_buffer("rotary_cos", rotary_cos, persistent=False)
        self.register_buffer("rotary_sin", rotary_sin, persistent=False)
        self.action_embed = nn.Embedding(NUM_ACTIONS + 1, c.hidden)
        self.context_embed = nn.Parameter(torch.zeros(1, c.context_frames, c.hidden))
        self.time_mlp = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.action_mlp = nn.Linear(c.future_frames * c.hidden, c.hidden)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(c.hidden, 2 * c.hidden)
        self.proj_out = nn.Linear(c.hidden, patch_dim)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            assert isinstance(block, DiTBlock)
            nn.init.zeros_(block.ada.weight)
            nn.init.zeros_(block.ada.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, noisy_future: torch.Tensor, context: torch.Tensor, actions: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        # On the path x_t = (1 - t) x0 + t noise, the velocity is noise - x0 = (x_t - x0) / t.
        t = (timestep / 1000.0).clamp(min=MIN_TIME)[:, None, None, None, None]
        return (noisy_future - self.predict_clean(noisy_future, context, actions, timestep)) / t

    def predict_clean(
        self, noisy_future: torch.Tensor, context: torch.Tensor, actions: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """The clean future frames: the last context frame plus the predicted change."""
        c = self.config
        frames = torch.cat([context, noisy_future], dim=2)
        b, grid = frames.shape[0], c.resolution // c.patch
        tokens = patchify(frames, c.patch)
        action_vectors = self.action_embed(actions)
        frame_roles = torch.cat([self.context_embed.expand(b, -1, -1), action_vectors], dim=1)
        # Added per token, so that the token grid stays readable from the patch embedding's reshape.
        h = self.patch_embed(tokens) + self.pos_embed + frame_roles.repeat_interleave(grid * grid, dim=1)
        cond = self.time_mlp(timestep_embedding(timestep, c.hidden)) + self.action_mlp(action_vectors.flatten(1))
        rotary = (self.rotary_cos, self.rotary_sin)
        for block in self.blocks:
            h = block(h, cond, rotary)
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=-1)
        out = self.proj_out(modulate(self.norm_out(h), shift, scale))
        future = out[:, c.context_frames * grid * grid :]
        change = unpatchify(future, c.channels, c.future_frames, c.resolution, c.resolution, c.patch)
        return context[:, :, -1:] + change
