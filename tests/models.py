"""Small denoisers written for the tests: plain ``nn.Module``s, no dependency on the library's own test model.

Every model takes a tensor input and a 1-D ``timestep`` (``(batch,)``, in [0, 1000]) and is deterministic given
its seed, so a compiled copy can be compared with the eager one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hero_compile.testing.dit import DiT, DiTConfig, make_dit, timestep_embedding
from hero_compile.testing.sampling import euler_flow_matching


def euler(model: Callable[..., torch.Tensor], noise: torch.Tensor, steps: int, *extra: torch.Tensor) -> torch.Tensor:
    """Flow-matching Euler sampler (no grad) for models called as ``model(x, *extra, timestep)``."""
    with torch.no_grad():
        return euler_flow_matching(lambda x, t: model(x, *extra, t), noise, steps)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Smooth sinusoidal features of ``t`` / 1000 (low frequencies, so features drift slowly over steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (t.float() / 1000.0)[:, None] * freqs[None] * 3.0
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# --------------------------------------------------------------------------------------------------------------
# A minimal single-stream stack: prelude (embedding + time), residual MLP blocks, a time-independent postlude.
# --------------------------------------------------------------------------------------------------------------


class MLPBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.mod = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(self.norm(h) * (1 + self.mod(cond)[:, None]))))
        return h + 0.5 * y


class StackModel(nn.Module):
    """``x: (batch, tokens, channels)``. The postlude reads only the stack's output (no timestep), so a cheap
    step's output is a function of the predicted deep feature alone. Subclasses change the blocks by
    ``block_type``."""

    block_type: type[nn.Module] = MLPBlock

    def __init__(self, depth: int = 4, width: int = 16, channels: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.width = width
        self.embed = nn.Linear(channels, width)
        self.time = nn.Linear(width, width)
        self.blocks = nn.ModuleList(self.block_type(width) for _ in range(depth))
        self.out = nn.Linear(width, channels)
        self.eval()

    def prelude(self, x: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.time(time_features(timestep, self.width))
        return self.embed(x) + cond[:, None], cond

    def postlude(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h, cond = self.prelude(x, timestep)
        for block in self.blocks:
            h = block(h, cond)
        return self.postlude(h)


# --------------------------------------------------------------------------------------------------------------
# A dual-stream (MM-DiT / CogVideoX style) transformer: video and text tokens attend jointly, each block returns
# both streams, the postlude reads the video stream only.
# --------------------------------------------------------------------------------------------------------------


class JointBlock(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.norm1_context = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(hidden, 6 * hidden)
        self.to_q = nn.Linear(hidden, hidden)
        self.to_k = nn.Linear(hidden, hidden)
        self.to_v = nn.Linear(hidden, hidden)
        self.to_out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.norm2_context = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(approximate="tanh"), nn.Linear(2 * hidden, hidden)
        )

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.shape[1]
        shift, scale, gate, shift_c, scale_c, gate_c = self.ada(F.silu(temb)).chunk(6, dim=-1)
        norm_h = self.norm1(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        norm_e = self.norm1_context(encoder_hidden_states) * (1 + scale_c[:, None]) + shift_c[:, None]
        joint = torch.cat([norm_e, norm_h], dim=1)
        b, n, d = joint.shape
        q = self.to_q(joint).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k = self.to_k(joint).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        v = self.to_v(joint).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        attn = self.to_out(attn)
        attn_e, attn_h = attn.split([text_len, n - text_len], dim=1)
        hidden_states = hidden_states + gate[:, None] * attn_h
        encoder_hidden_states = encoder_hidden_states + gate_c[:, None] * attn_e
        joint = torch.cat([self.norm2_context(encoder_hidden_states), self.norm2(hidden_states)], dim=1)
        ff = self.ff(joint)
        ff_e, ff_h = ff.split([text_len, n - text_len], dim=1)
        return hidden_states + ff_h, encoder_hidden_states + ff_e


class SingleStreamBlock(nn.Module):
    """Flux's single-stream block: attention and MLP side by side on the joined text and video tokens."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(hidden, 3 * hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.mlp = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(3 * hidden, hidden)

    def forward(self, joint: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(F.silu(temb)).chunk(3, dim=-1)
        h = self.norm(joint) * (1 + scale[:, None]) + shift[:, None]
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        mixed = torch.cat([attn, F.gelu(self.mlp(h), approximate="tanh")], dim=-1)
        return joint + gate[:, None] * self.out(mixed)


class DualStreamTransformer(nn.Module):
    """``x: (batch, tokens, channels)`` video latents, ``encoder_hidden_states: (batch, text_tokens, text_dim)``.

    ``joint_final`` makes the postlude read both streams (two values leave the stack instead of one).
    ``single_depth`` adds a Flux-style tail: the streams are joined, then run through single-stream blocks.
    """

    def __init__(
        self,
        depth: int = 4,
        hidden: int = 32,
        heads: int = 2,
        channels: int = 4,
        text_dim: int = 8,
        seed: int = 0,
        joint_final: bool = False,
        single_depth: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = hidden
        self.joint_final = joint_final
        self.patch_embed = nn.Linear(channels, hidden)
        self.text_proj = nn.Linear(text_dim, hidden)
        self.time_embedding = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.transformer_blocks = nn.ModuleList(JointBlock(hidden, heads) for _ in range(depth))
        self.single_transformer_blocks = nn.ModuleList(SingleStreamBlock(hidden, heads) for _ in range(single_depth))
        self.norm_final = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, channels)
        self.eval()

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.time_embedding(time_features(timestep, self.hidden))
        hidden_states = self.patch_embed(x)
        encoder_hidden_states = self.text_proj(encoder_hidden_states)
        for block in self.transformer_blocks:
            hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, temb)
        if len(self.single_transformer_blocks):
            text_len = encoder_hidden_states.shape[1]
            joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
            for single in self.single_transformer_blocks:
                joint = single(joint, temb)
            encoder_hidden_states, hidden_states = joint[:, :text_len], joint[:, text_len:]
        if self.joint_final:  # CogVideoX-5B: the final norm sees both streams, then the text tokens are dropped
            text_len = encoder_hidden_states.shape[1]
            hidden_states = self.norm_final(torch.cat([encoder_hidden_states, hidden_states], dim=1))[:, text_len:]
        else:  # CogVideoX-2B: only the video stream leaves the stack
            hidden_states = self.norm_final(hidden_states)
        return self.proj_out(hidden_states)


# --------------------------------------------------------------------------------------------------------------
# Models HERO must decline.
# --------------------------------------------------------------------------------------------------------------


class NoStackModel(nn.Module):
    """A denoiser whose layers are named attributes: no indexed container, hence no block stack."""

    def __init__(self, width: int = 16, channels: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.width = width
        self.embed = nn.Linear(channels, width)
        self.layer_a = MLPBlock(width)
        self.layer_b = MLPBlock(width)
        self.layer_c = MLPBlock(width)
        self.out = nn.Linear(width, channels)
        self.eval()

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        cond = time_features(timestep, self.width)
        h = self.embed(x)
        h = self.layer_c(self.layer_b(self.layer_a(h, cond), cond), cond)
        return self.out(h)


class NonzeroBlock(MLPBlock):
    """A block with a data-dependent op: the count of positive activations (``torch.nonzero``)."""

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = super().forward(h, cond)
        positive = torch.nonzero(h > 0)
        return h + 1e-3 * positive.to(h.dtype).sum() / h.numel()


class DataDependentModel(StackModel):
    block_type = NonzeroBlock


class CountingBlock(MLPBlock):
    """A block with a side effect outside itself: it counts its calls in a buffer."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        self.seen.copy_(h.mean())
        return super().forward(h, cond)


class CountingModel(StackModel):
    block_type = CountingBlock


# --------------------------------------------------------------------------------------------------------------
# A DiT with a conditioning input (class or text embedding), for classifier-free guidance.
# --------------------------------------------------------------------------------------------------------------


class ConditionedDiT(DiT):
    """:class:`DiT` whose conditioning vector also carries ``context`` (``(batch, hidden)``, zeros = uncond)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.context_proj = nn.Linear(config.hidden, config.hidden)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        cond = self.time_mlp(timestep_embedding(timestep, self.config.hidden)) + self.context_proj(context)
        return self.denoise(x, cond)


def make_conditioned_dit(config: DiTConfig, seed: int = 0) -> ConditionedDiT:
    base = make_dit(config, seed)
    torch.manual_seed(seed + 1)
    model = ConditionedDiT(config)
    missing, _ = model.load_state_dict(base.state_dict(), strict=False)
    assert set(missing) == {"context_proj.weight", "context_proj.bias"}
    return model.eval()
