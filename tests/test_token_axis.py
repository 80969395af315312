"""The token-axis rules for norms, position tables, cross-attention and temporal blocks, on token counts equal to
head_dim, hidden size and frame count (tests/test_refresh.py covers views, permutes, chunks and linears).

A cheap step of blocks the analysis accepts returns, at each token, this step's exact value (refreshed) or the
cached one (stale), and exactly the subset is refreshed; gathering along a wrong dimension of the same size would
mix tokens and break this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_refresh import REFRESH_ONLY, run_steps
from torch import nn

from hero_compile import HeroConfig

NORMS = ("layer_norm", "rms_norm", "normalize", "written_out_rms")


@dataclass(frozen=True)
class Shape:
    """A block's layout: ``(positions, frames, hidden)`` with attention along the frames when ``temporal``
    (Latte's temporal blocks), else ``(1, tokens, hidden)`` with ``frames`` unused."""

    tokens: int
    frames: int
    hidden: int
    heads: int
    temporal: bool

    @property
    def stream(self) -> tuple[int, int]:
        return (self.tokens, self.frames) if self.temporal else (1, self.tokens)

    @property
    def refreshed_dim(self) -> int:
        """The largest dimension before the channels; dimension 1 among equals."""
        first, second = self.stream
        return 0 if first > second else 1


def norm(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A norm over the last dimension (per head on ``(..., heads, head_dim)``, across heads on ``(..., hidden)``)."""
    if kind == "layer_norm":
        return F.layer_norm(x, x.shape[-1:])
    if kind == "rms_norm":
        return torch.rms_norm(x, x.shape[-1:])
    if kind == "normalize":
        return F.normalize(x, dim=-1)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class AxisRuleBlock(nn.Module):
    """Modulation broadcast over the tokens, a qk-norm, rotary tables computed from a position input, and
    attention to the block's own tokens or to text states."""

    def __init__(self, shape: Shape, norm_kind: str, per_head: bool, cross: bool) -> None:
        super().__init__()
        self.shape, self.norm_kind, self.per_head, self.cross = shape, norm_kind, per_head, cross
        self.qkv = nn.Linear(shape.hidden, 3 * shape.hidden)
        self.text_kv = nn.Linear(shape.hidden, 2 * shape.hidden)
        self.out = nn.Linear(shape.hidden, shape.hidden)
        self.freqs = nn.Parameter(torch.linspace(0.1, 1.0, shape.hidden // shape.heads // 2))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, hidden)`` -> ``(b, n, heads, head_dim)``, normed per head or across heads."""
        b, n, d = x.shape
        if not self.per_head:
            return norm(x, self.norm_kind).view(b, n, self.shape.heads, d // self.shape.heads)
        return norm(x.view(b, n, self.shape.heads, d // self.shape.heads), self.norm_kind)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] * self.freqs[None]  # (sequence, head_dim / 2): a position table
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor, text: torch.Tensor, cond: torch.Tensor, positions: torch.Tensor
                ) -> torch.Tensor:
        h = x * (1 + cond)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if self.cross:
            k, v = self.text_kv(text.expand(x.shape[0], -1, -1)).chunk(2, dim=-1)
        q, k, v = self.heads(q), self.heads(k), v.unflatten(-1, (self.shape.heads, -1))
        q = self.rotate(q, positions)
        if not self.cross:
            k = self.rotate(k, positions)
        attention = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(attention.transpose(1, 2).flatten(2))


class AxisRuleModel(nn.Module):
    def __init__(self, shape: Shape, norm_kind: str, per_head: bool, cross: bool,
                 block: type[AxisRuleBlock] = AxisRuleBlock) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, shape.hidden)
        self.time = nn.Linear(1, shape.hidden)
        self.text = nn.Parameter(torch.randn(1, 3, shape.hidden))
        self.blocks = nn.ModuleList(block(shape, norm_kind, per_head, cross) for _ in range(2))
        self.out = nn.Linear(shape.hidden, 4)
        self.eval()

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        cond = torch.tanh(self.time(timestep[:1, None] / 1000.0))  # (1, hidden): shared by every token
        positions = torch.arange(x.shape[1], dtype=torch.float32)  # along the attention's sequence
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, self.text, cond, positions)
        return self.out(h)


def refreshed_or_stale(now: torch.Tensor, exact: torch.Tensor, before: torch.Tensor, dim: int) -> tuple[bool, int]:
    """Whether every slice along ``dim`` is this step's exact value or the cached one, and how many are fresh."""
    others = [d for d in range(now.dim()) if d != dim]
    refreshed = torch.isclose(now, exact, atol=1e-5).all(dim=others[-1]).all(dim=others[0])
    stale = torch.isclose(now, before, atol=1e-5).all(dim=others[-1]).all(dim=others[0])
    return bool((refreshed | stale).all()), int((refreshed & ~stale).sum())


@settings(max_examples=16, deadline=None)
@given(
    tokens=st.sampled_from([4, 8]),
    heads=st.sampled_from([1, 2]),
    equal_to=st.sampled_from(["head_dim", "hidden", "frames"]),
    norm_kind=st.sampled_from(NORMS),
    per_head=st.booleans(),
    cross=st.booleans(),
    temporal=st.booleans(),
)
def test_norms_position_tables_and_cross_attention_keep_the_token_axis(
    tokens: int, heads: int, equal_to: str, norm_kind: str, per_head: bool, cross: bool, temporal: bool
) -> None:
    hidden = {"head_dim": tokens * heads, "hidden": tokens, "frames": 4 * heads}[equal_to]
    if hidden % (2 * heads):
        return  # rotary pairs the channels of each head
    shape = Shape(tokens, tokens if equal_to == "frames" else 2, hidden, heads, temporal)
    model = AxisRuleModel(shape, norm_kind, per_head, cross)
    x = torch.randn(*shape.stream, 4)
    config = HeroConfig(refresh_ratio=0.5, patch_size=1, split=2, **REFRESH_ONLY)
    outputs, expected, stats = run_steps(model, config, (x,), [900.0, 500.0])
    assert not stats.refresh_skipped and stats.cheap_calls == 1, stats.refresh_skipped
    every_token, fresh = refreshed_or_stale(outputs[1], expected[1], expected[0], shape.refreshed_dim)
    assert every_token and fresh == stats.tokens_refreshed_per_cheap_step["blocks.0"]


class TokenNormBlock(AxisRuleBlock):
    def forward(self, x: torch.Tensor, text: torch.Tensor, cond: torch.Tensor, positions: torch.Tensor
                ) -> torch.Tensor:
        return x + F.normalize(self.out(x * (1 + cond)), dim=1)  # over the tokens: not token-wise


def test_a_norm_over_the_tokens_is_rejected_with_the_node_named() -> None:
    model = AxisRuleModel(Shape(8, 2, 8, 1, temporal=False), "layer_norm", False, False, block=TokenNormBlock)
    _, _, stats = run_steps(model, HeroConfig(split=2, **REFRESH_ONLY), (torch.randn(1, 8, 4),), [900.0, 800.0])
    assert set(stats.refresh_skipped) == {"blocks.0", "blocks.1"}
    assert all("(normalize): normalization over the token axis" in r for r in stats.refresh_skipped.values())


class PackedTextBlock(nn.Module):
    """Mochi's joint attention: the text tokens the mask keeps, packed with ``nonzero()`` (a run of data-dependent
    length) after the video tokens, transposed to heads first, attended over, padded back to all the text tokens
    and split into the two streams."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.text_qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.text_out = nn.Linear(hidden, hidden)

    def split_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(b, n, 3 * hidden)`` -> queries, keys and values ``(b, n, heads, head_dim)``."""
        return [t.unflatten(-1, (self.heads, -1)) for t in x.chunk(3, dim=-1)]

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, text_tokens = x.shape[1], text.shape[1]
        valid = torch.nonzero(mask.flatten()).flatten()
        streams = zip(self.split_heads(self.qkv(x * (1 + cond))), self.split_heads(self.text_qkv(text)))
        packed = [torch.cat([video, words[:, valid]], dim=1).transpose(1, 2) for video, words in streams]
        attention = F.scaled_dot_product_attention(*packed)
        attention = F.pad(attention, (0, 0, 0, tokens + text_tokens - attention.size(2)))
        video, words = attention.transpose(1, 2).flatten(2).split_with_sizes((tokens, text_tokens), dim=1)
        return x + self.out(video), text + self.text_out(words)


class PackedTextModel(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, hidden)
        self.time = nn.Linear(1, hidden)
        self.blocks = nn.ModuleList(PackedTextBlock(hidden, heads) for _ in range(2))
        self.out = nn.Linear(hidden, 4)
        self.eval()

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, timestep: torch.Tensor
                ) -> torch.Tensor:
        cond = torch.tanh(self.time(timestep[:1, None] / 1000.0))
        h = self.embed(x)
        for block in self.blocks:
            h, text = block(h, text, mask, cond)
        return self.out(h)


@settings(max_examples=8, deadline=None)
@given(
    tokens=st.sampled_from([4, 8]),
    heads=st.sampled_from([1, 2]),
    equal_to=st.sampled_from(["head_dim", "hidden"]),
    valid=st.integers(min_value=0, max_value=3),
)
def test_text_packed_with_nonzero_after_the_tokens_is_followed_to_its_pad(
    tokens: int, heads: int, equal_to: str, valid: int
) -> None:
    """The packed text is a fixed run of data-dependent length beside the refreshed tokens: the subset attends
    to ``k + valid`` queries, pads back to ``k + 3`` and splits ``(k, 3)``."""
    hidden = {"head_dim": tokens * heads, "hidden": tokens}[equal_to]
    model = PackedTextModel(hidden, heads)
    x, text = torch.randn(1, tokens, 4), torch.randn(1, 3, hidden)
    mask = (torch.arange(3) < valid).float()[None]
    config = HeroConfig(refresh_ratio=0.5, patch_size=1, split=2, **REFRESH_ONLY)
    outputs, expected, stats = run_steps(model, config, (x, text, mask), [900.0, 500.0])
    assert not stats.refresh_skipped and stats.cheap_calls == 1, stats.refresh_skipped
    every_token, fresh = refreshed_or_stale(outputs[1], expected[1], expected[0], 1)
    assert every_token and fresh == stats.tokens_refreshed_per_cheap_step["blocks.0"]
