"""diffusers' own transformers, built small from their configs (nothing downloaded), under the hero backend.

Nothing in hero_compile names these classes: discovery, the timestep input and the token streams are read off
the graph Dynamo captures. Each model runs a 12-step flow-matching loop twice, compiled once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import torch
from conftest import assert_no_recompiles, capture_graph, fresh_dynamo, recompile_report
from models import euler
from test_refresh import REFRESH_ONLY

from hero_compile import GraphStats, HeroBackend, HeroConfig
from hero_compile.measurement import psnr_over_reference_range
from hero_compile.passes.discover_blocks import discover_blocks
from hero_compile.passes.plan_refresh import plan_refresh

diffusers = pytest.importorskip("diffusers")

STEPS = 12


@dataclass
class Case:
    model: torch.nn.Module
    sample: torch.Tensor
    call: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    """``call(model, sample, timestep)``: the velocity, timestep in [0, 1000]."""


def called_with(timestep_scale: float = 1.0, **context: Any) -> Callable[..., torch.Tensor]:
    """``call`` for a diffusers transformer taking ``context`` (text states, masks, ids) besides the sample."""
    return lambda m, x, t: m(hidden_states=x, timestep=t * timestep_scale, return_dict=False, **context)[0]


def cogvideox() -> Case:
    model = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=4, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=6,
    )
    text = torch.randn(1, 6, 8)
    return Case(model, torch.randn(1, 3, 4, 8, 8), called_with(encoder_hidden_states=text))


def wan() -> Case:
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=4, rope_max_seq_len=32,
    )
    text = torch.randn(1, 6, 8)
    return Case(model, torch.randn(1, 4, 2, 8, 8), called_with(encoder_hidden_states=text))


def flux() -> Case:
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(4, 4, 8),
    )
    context: dict[str, Any] = dict(encoder_hidden_states=torch.randn(1, 5, 8), pooled_projections=torch.randn(1, 8),
                                   img_ids=torch.randn(16, 3), txt_ids=torch.randn(5, 3))
    return Case(model, torch.randn(1, 16, 4), called_with(timestep_scale=1e-3, **context))


def cosmos() -> Case:
    # concat_padding_mask=False: the padding mask is resized with torchvision, which this environment lacks.
    model = diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=3, mlp_ratio=2,
        text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type="learnable",
    )
    text = torch.randn(1, 5, 16)
    return Case(model, torch.randn(1, 4, 2, 8, 8), called_with(encoder_hidden_states=text))


def hunyuan_video() -> Case:
    model = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    context: dict[str, Any] = dict(encoder_hidden_states=torch.randn(1, 5, 16), encoder_attention_mask=torch.ones(1, 5),
                                   pooled_projections=torch.randn(1, 8), guidance=torch.full((1,), 3000.0))
    return Case(model, torch.randn(1, 4, 2, 4, 4), called_with(**context))


def ltx_video() -> Case:
    model = diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=3, caption_channels=16, qk_norm="rms_norm_across_heads",
    )
    context: dict[str, Any] = dict(encoder_hidden_states=torch.randn(1, 5, 16), encoder_attention_mask=torch.ones(1, 5),
                                   num_frames=2, height=4, width=4)
    return Case(model, torch.randn(1, 2 * 4 * 4, 4), called_with(**context))


def latte() -> Case:
    model = diffusers.LatteTransformer3DModel(
        sample_size=8, num_layers=3, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=8,
        in_channels=4, cross_attention_dim=16, out_channels=4, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=2,
    )
    text = torch.randn(1, 5, 8)
    return Case(model, torch.randn(1, 4, 2, 8, 8), called_with(encoder_hidden_states=text))


def mochi() -> Case:
    model = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=3, pooled_projection_dim=16,
        in_channels=4, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=16,
    )
    context: dict[str, Any] = dict(encoder_hidden_states=torch.randn(1, 5, 16), encoder_attention_mask=torch.ones(1, 5))
    return Case(model, torch.randn(1, 4, 2, 8, 8), called_with(**context))


CASES = {"cogvideox": cogvideox, "wan": wan, "flux": flux, "cosmos": cosmos, "hunyuan_video": hunyuan_video,
         "ltx_video": ltx_video, "latte": latte, "mochi": mochi}


def generate(case: Case, model: torch.nn.Module) -> torch.Tensor:
    return euler(partial(case.call, model), case.sample, STEPS)


TAILS = {"flux": "single_transformer_blocks", "hunyuan_video": "single_transformer_blocks"}
"""Models with a second stack after the first, skipped with the deep blocks on cheap steps."""

# hero's defaults against full compute, in dB: each model's measured figure minus 3 (scripts/calibrate_bars.py).
DEFAULTS_BAR = {"cogvideox": 51.5, "cosmos": 38.5, "flux": 46.5, "hunyuan_video": 53.0, "latte": 53.0,
                "ltx_video": 55.5, "mochi": 39.5, "wan": 50.5}
STALE_OR_DROPPED = ("history_not_updated", "deep_blocks_dropped")
# Extrapolation off (order 0) costs CogVideoX, Cosmos, Latte and Mochi under 3 dB at 12 steps: too little to bar.
CAUGHT = {name: (*STALE_OR_DROPPED, "extrapolation_off") if name in {"flux", "hunyuan_video", "ltx_video", "wan"}
          else STALE_OR_DROPPED for name in CASES}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.quality_bar(*CAUGHT[n])) for n in sorted(CASES)])
def test_hero_defaults_accelerate_the_model_in_one_graph(name: str) -> None:
    torch.manual_seed(0)
    case = CASES[name]()
    case.model.eval()
    reference = generate(case, case.model)
    backend = HeroBackend(HeroConfig(lowering="aot_eager"))
    compiled = torch.compile(case.model, backend=backend, fullgraph=True)
    results = [generate(case, compiled) for _ in range(2)]
    assert_no_recompiles(recompile_report())
    (graph,) = backend.stats().graphs
    assert graph.accelerated, graph.fallback_reason
    assert graph.cheap_calls > 0 and graph.generations == 2
    assert all(psnr_over_reference_range(result, reference) >= DEFAULTS_BAR[name] for result in results)
    tail = [path for path in graph.tail_blocks if path.startswith(TAILS.get(name, "-"))]
    assert bool(tail) == (name in TAILS), graph.tail_blocks


@pytest.fixture(scope="module")
def plain_inductor() -> dict[str, torch.Tensor]:
    """Each model's generation compiled by plain Inductor, the reference of the Inductor tests (computed on
    first use, so that selecting one model compiles only that one)."""
    return {}


def plain_inductor_generation(name: str, references: dict[str, torch.Tensor]) -> tuple[Case, torch.Tensor]:
    torch.manual_seed(0)
    case = CASES[name]()
    case.model.eval()
    if name not in references:
        fresh_dynamo()
        references[name] = generate(case, torch.compile(case.model, backend="inductor", fullgraph=True))
    fresh_dynamo()
    return case, references[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_disabled_equals_plain_inductor(name: str, plain_inductor: dict[str, torch.Tensor]) -> None:
    """Inductor compiles the same graph twice; its FX graph cache makes the second compilation cheap."""
    case, plain = plain_inductor_generation(name, plain_inductor)
    disabled = HeroBackend(HeroConfig(enabled=False))
    torch.testing.assert_close(generate(case, torch.compile(case.model, backend=disabled, fullgraph=True)), plain,
                               atol=1e-4, rtol=0)
    assert disabled.stats().graphs[0].fallback_reason == "disabled by HeroConfig.enabled=False"


@pytest.mark.quality_bar(*STALE_OR_DROPPED)
@pytest.mark.parametrize("name", sorted(CASES))
def test_defaults_under_inductor(name: str, plain_inductor: dict[str, torch.Tensor]) -> None:
    """Every model with real Inductor lowering: the defaults (output caching, nothing to measure) compile their
    full and cheap variants, accelerate two generations in one graph, and both are the same."""
    case, plain = plain_inductor_generation(name, plain_inductor)
    backend = HeroBackend()
    compiled = torch.compile(case.model, backend=backend, fullgraph=True)
    results = [generate(case, compiled) for _ in range(2)]
    assert_no_recompiles(recompile_report())
    (graph,) = backend.stats().graphs
    assert graph.accelerated and graph.cheap_calls > 0 and graph.generations == 2
    assert torch.equal(results[0], results[1])
    assert all(psnr_over_reference_range(result, plain) >= DEFAULTS_BAR[name] for result in results)


HIERARCHY = HeroConfig(cache_target="residual")
"""HERO's hierarchy: the split measured over the first steps, shallow blocks refreshed, deep ones extrapolated."""


def two_generations(case: Case, config: HeroConfig, lowering: str) -> tuple[list[torch.Tensor], GraphStats]:
    """Two generations of ``case`` compiled with ``config`` lowered by ``lowering``, in one graph and no recompile."""
    fresh_dynamo()
    backend = HeroBackend(config.replace(lowering=lowering))
    compiled = torch.compile(case.model, backend=backend, fullgraph=True)
    results = [generate(case, compiled) for _ in range(2)]
    assert_no_recompiles(recompile_report())
    (graph,) = backend.stats().graphs
    return results, graph


@pytest.mark.parametrize("name", sorted(CASES))
def test_hierarchy_under_inductor_equals_aot_eager(name: str) -> None:
    """Every variant of HERO's hierarchy (measuring, full, cheap with refresh) compiles under real Inductor and
    runs two generations in one graph, equal to the same under aot_eager (whose cheap calls
    ``tests/test_reference.py`` checks against an independent reference) up to Inductor's rounding."""
    torch.manual_seed(0)
    case = CASES[name]()
    case.model.eval()
    expected, aot = two_generations(case, HIERARCHY, "aot_eager")
    results, graph = two_generations(case, HIERARCHY, "inductor")
    assert graph.accelerated and graph.fallback_reason is None and graph.generations == 2 and graph.cheap_calls > 0
    assert graph.split_reason is not None and graph.split_reason.startswith("profiled over steps")
    assert (graph.split, graph.tokens_refreshed_per_cheap_step) == (aot.split, aot.tokens_refreshed_per_cheap_step)
    assert graph.tokens_refreshed_per_cheap_step, graph.refresh_skipped
    for result, want in zip(results, expected):
        assert float((result - want).abs().max() / want.abs().max()) <= 1e-4


ADAPTIVE = HeroConfig(schedule="adaptive", adaptive_threshold=0.05)
"""5 of 12 steps cheap on CogVideoX: spaced by the measured change, below the cap of 4 in a row."""


def test_adaptive_schedule_under_inductor_equals_aot_eager() -> None:
    """The adaptive schedule's cheap variant, which measures the stack input's change inside the graph, under real
    Inductor: one graph over two generations, the same cheap calls as under aot_eager (the decisions read the
    in-graph estimate) and the same outputs up to Inductor's rounding."""
    torch.manual_seed(0)
    case = CASES["cogvideox"]()
    case.model.eval()
    expected, aot = two_generations(case, ADAPTIVE, "aot_eager")
    results, graph = two_generations(case, ADAPTIVE, "inductor")
    assert graph.accelerated and graph.generations == 2
    assert graph.cheap_calls == aot.cheap_calls == 10
    for result, want in zip(results, expected):
        assert float((result - want).abs().max() / want.abs().max()) <= 1e-4


@pytest.mark.parametrize("name", sorted(CASES))
def test_ratio_one_refresh_equals_full_compute(name: str) -> None:
    """Every block shallow (the split is capped at the stack's depth) and refreshed at ratio 1: each cheap call
    recomputes every token through the rewritten blocks (gathers, scatters, resized views, splits and pads) and
    equals the eager model. Mochi's blocks pack the valid text tokens with ``nonzero()``."""
    torch.manual_seed(0)
    case = CASES[name]()
    case.model.eval()
    backend = HeroBackend(HeroConfig(refresh_ratio=1.0, split=64, **REFRESH_ONLY))
    compiled = torch.compile(case.model, backend=backend, fullgraph=True)
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):
            sample, timestep = torch.randn_like(case.sample), torch.tensor([t])
            torch.testing.assert_close(case.call(compiled, sample, timestep), case.call(case.model, sample, timestep),
                                       atol=1e-5, rtol=0)
    (graph,) = backend.stats().graphs
    assert graph.cheap_calls == 2 and not graph.refresh_skipped
    assert list(graph.tokens_refreshed_per_cheap_step) == graph.blocks


class Called(torch.nn.Module):
    """A case's model called as the loop calls it, for capturing its graph."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.model, self.call = case.model, case.call

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.call(self.model, sample, timestep)


def test_mochi_token_grid_is_read_through_its_per_frame_patch_embedding() -> None:
    """Mochi folds the frames into the batch, embeds each frame's 2 x 2 patches, then merges the frames with each
    frame's flattened height x width: the refresh subset is balanced over (frames, height, width) in tokens."""
    case = mochi()
    gm = capture_graph(Called(case), case.sample, torch.tensor([500.0]))
    assert plan_refresh(gm, gm, discover_blocks(gm), split=1).token_grid == (2, 4, 4)
