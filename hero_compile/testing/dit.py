"""A small DiT denoiser and a flow-matching sampler, for tests and benchmarks.

The model is written the way video diffusion transformers are: patch embedding over (frames, height,
width), sinusoidal timestep embedding with adaLN-Zero modulation, fused SDPA, a stack of identical blocks
in an ``nn.ModuleList`` and a final modulated projection back to patches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hero_compile.testing.sampling import euler_flow_matching


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of :class:`DiT`. The defaults are the benchmark model of ``benchmarks/speed_dit.py``."""

    channels: int = 4
    hidden: int = 256
    heads: int = 4
    depth: int = 12
    mlp_ratio: float = 4.0
    patch: int = 2
    frames: int = 4
    height: int = 32
    width: int = 32

    @property
    def tokens(self) -> int:
        return self.frames * (self.height // self.patch) * (self.width // self.patch)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t`` (shape ``(batch,)``, in [0, 1000]) into ``dim`` features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """``(batch, channels, frames, H, W)`` -> tokens ``(batch, frames * H/p * W/p, channels * p * p)``, the
    tokens in (frame, row, column) order."""
    b, ch, f, hh, ww = frames.shape
    gh, gw = hh // patch, ww // patch
    return (
        frames.view(b, ch, f, gh, patch, gw, patch)
        .permute(0, 2, 3, 5, 1, 4, 6)
        .reshape(b, f * gh * gw, ch * patch * patch)
    )


def unpatchify(tokens: torch.Tensor, channels: int, frames: int, height: int, width: int, patch: int) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    b = tokens.shape[0]
    gh, gw = height // patch, width // patch
    return (
        tokens.view(b, frames, gh, gw, channels, patch, patch)
        .permute(0, 4, 1, 2, 5, 3, 6)
        .reshape(b, channels, frames, height, width)
    )


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (``(batch, heads, tokens, head_dim)``) by cos/sin tables that broadcast to it."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return x * cos + rotated * sin


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the conditioning vector."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden)
        )
        self.ada = nn.Linear(hidden, 6 * hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        b, n, d = x.shape
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + gate1[:, None] * self.proj(attn.transpose(1, 2).reshape(b, n, d))
        h = modulate(self.norm2(x), shift2, scale2)
        return x + gate2[:, None] * self.mlp(h)


class DiT(nn.Module):
    """Video DiT over latents of shape ``(batch, channels, frames, height, width)``; predicts a velocity."""

    def __init__(self, config: DiTConfig = DiTConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Linear(c.channels * c.patch * c.patch, c.hidden)
        self.pos_embed = nn.Parameter(torch.randn(1, c.tokens, c.hidden) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.blocks = nn.ModuleList(DiTBlock(c.hidden, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(c.hidden, 2 * c.hidden)
        self.proj_out = nn.Linear(c.hidden, c.channels * c.patch * c.patch)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        embedding = timestep_embedding(timestep, self.config.hidden).to(self.pos_embed.dtype)
        return self.denoise(x, self.time_mlp(embedding))

    def denoise(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The network after the conditioning vector ``cond`` is formed."""
        c = self.config
        _, ch, f, hh, ww = x.shape
        h = self.patch_embed(patchify(x, c.patch)) + self.pos_embed
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=-1)
        return unpatchify(self.proj_out(modulate(self.norm_out(h), shift, scale)), ch, f, hh, ww, c.patch)


def make_dit(config: DiTConfig = DiTConfig(), seed: int = 0) -> DiT:
    """A :class:`DiT` with deterministic weights whose features drift smoothly from step to step.

    Random adaLN weights are scaled up from the usual zero init so that every block contributes, as in a
    trained model; the timestep embedding uses the standard low-frequency range so features change smoothly.
    """
    torch.manual_seed(seed)
    model = DiT(config)
    with torch.no_grad():
        for block in model.blocks:
            assert isinstance(block, DiTBlock)
            block.ada.weight.mul_(0.5)
    return model.eval()


def flow_matching_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, steps: int = 20
) -> torch.Tensor:
    """Euler sampler of a rectified-flow model from t=1 (noise) to t=0; the model sees t scaled to [0, 1000]
    (:func:`~hero_compile.testing.sampling.euler_flow_matching` with the defaults of the tests and benchmarks)."""
    return euler_flow_matching(model, noise, steps)
