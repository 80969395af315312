"""Transformer blocks written in the styles the token refresh must handle, with optional rotary embeddings.

- ``dit``: single stream, fused qkv, adaLN (hero_compile.testing.dit style, plus rotary).
- ``cogvideox``: text and video concatenated for joint attention and feed-forward, rotary applied in place to
  the video part of queries and keys (``query[:, :, text_len:] = rotary(...)``), as diffusers' CogVideoX does.
- ``flux``: separate projections per stream, queries/keys/values concatenated for joint attention, rotary on the
  joint sequence, attention output split back (diffusers' Flux double-stream blocks).
- ``transposed``: ``dit`` returning its output as a transposed view (not in ``STYLES``: tests/test_layout.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hero_compile.testing.dit import apply_rotary

STYLES = ("dit", "cogvideox", "flux")


def rotary_tables(positions: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape ``(positions, dim)``, pairs of channels sharing a frequency."""
    freqs = 1.0 / (100.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * freqs[None]
    return angles.cos().repeat_interleave(2, dim=-1), angles.sin().repeat_interleave(2, dim=-1)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (t.float() / 1000.0)[:, None] * freqs[None] * 3.0
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def heads(x: torch.Tensor, count: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, count, d // count).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class DiTStyleBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.ada = nn.Linear(hidden, 4 * hidden)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, rotary: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, shift2, scale2 = self.ada(F.silu(temb)).chunk(4, dim=-1)
        b, n, d = x.shape
        h = self.norm1(x) * (1 + scale[:, None]) + shift[:, None]
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        x = x + self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        x = x + self.mlp(self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None])
        return x, context


class CogVideoXStyleBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden)
        self.to_q, self.to_k, self.to_v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.norm_q = nn.LayerNorm(hidden // num_heads)
        self.norm_k = nn.LayerNorm(hidden // num_heads)
        self.to_out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU("tanh"), nn.Linear(2 * hidden, hidden))
        self.ada = nn.Linear(hidden, 4 * hidden)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, rotary: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = context.shape[1]
        gate, gate_c, shift, scale = self.ada(F.silu(temb)).chunk(4, dim=-1)
        joint = torch.cat([context, x], dim=1)
        h = self.norm1(joint) * (1 + scale[:, None]) + shift[:, None]
        q = self.norm_q(heads(self.to_q(h), self.num_heads))
        k = self.norm_k(heads(self.to_k(h), self.num_heads))
        v = heads(self.to_v(h), self.num_heads)
        if rotary is not None:
            q[:, :, text_len:] = apply_rotary(q[:, :, text_len:], *rotary)
            k[:, :, text_len:] = apply_rotary(k[:, :, text_len:], *rotary)
        attn = self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        context = context + gate_c[:, None] * attn[:, :text_len]
        x = x + gate[:, None] * attn[:, text_len:]
        ff = self.ff(self.norm2(torch.cat([context, x], dim=1)))
        return x + ff[:, text_len:], context + ff[:, :text_len]


class FluxStyleBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_x = nn.LayerNorm(hidden, elementwise_affine=False)
        self.norm_c = nn.LayerNorm(hidden, elementwise_affine=False)
        self.qkv_x = nn.Linear(hidden, 3 * hidden)
        self.qkv_c = nn.Linear(hidden, 3 * hidden)
        self.out_x = nn.Linear(hidden, hidden)
        self.out_c = nn.Linear(hidden, hidden)
        self.mlp_x = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.mlp_c = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.ada = nn.Linear(hidden, 2 * hidden)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, rotary: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self.ada(F.silu(temb)).chunk(2, dim=-1)
        qx, kx, vx = (heads(t, self.num_heads) for t in self.qkv_x(self.norm_x(x) * (1 + scale[:, None])).chunk(3, -1))
        qc, kc, vc = (heads(t, self.num_heads) for t in self.qkv_c(self.norm_c(context) + shift[:, None]).chunk(3, -1))
        q, k, v = torch.cat([qc, qx], dim=2), torch.cat([kc, kx], dim=2), torch.cat([vc, vx], dim=2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        attn = merge_heads(F.scaled_dot_product_attention(q, k, v))
        text_len = context.shape[1]
        attn_c, attn_x = attn[:, :text_len], attn[:, text_len:]
        x = x + self.out_x(attn_x)
        context = context + self.out_c(attn_c)
        return x + self.mlp_x(x), context + self.mlp_c(context)


class TransposedOutputBlock(DiTStyleBlock):
    """A DiT block whose output is a ``(batch, tokens, channels)`` view of channels-first memory: every value
    the runtime keeps of it and feeds back must take the layout the compiled variants assert."""

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, rotary: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, context = super().forward(x, context, temb, rotary)
        return x.transpose(1, 2).contiguous().transpose(1, 2), context


BLOCKS = {"dit": DiTStyleBlock, "cogvideox": CogVideoXStyleBlock, "flux": FluxStyleBlock,
          "transposed": TransposedOutputBlock}


class StyledTransformer(nn.Module):
    """``x: (batch, tokens, channels)``, ``context: (batch, text_tokens, hidden)``, ``timestep: (batch,)``."""

    def __init__(
        self, style: str, rotary: bool, depth: int = 3, hidden: int = 32, num_heads: int = 2, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.style, self.rotary, self.hidden, self.num_heads = style, rotary, hidden, num_heads
        self.embed = nn.Linear(4, hidden)
        self.time = nn.Linear(hidden, hidden)
        self.blocks = nn.ModuleList(BLOCKS[style](hidden, num_heads) for _ in range(depth))
        self.out = nn.Linear(hidden, 4)
        self.eval()

    def forward(self, x: torch.Tensor, context: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.time(time_features(timestep, self.hidden))
        h = self.embed(x)
        rotary = None
        if self.rotary:
            # Flux rotates the joint (text + video) sequence; the others the video tokens only.
            positions = h.shape[1] + (context.shape[1] if self.style == "flux" else 0)
            rotary = rotary_tables(positions, self.hidden // self.num_heads)
        for block in self.blocks:
            h, context = block(h, context, temb, rotary)
        return self.out(h)
