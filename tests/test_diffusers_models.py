"""diffusers' own transformers, built small from their configs (nothing downloaded), under the hero backend.

Nothing in hero_compile names these classes: discovery, the timestep input and the token streams are read off
the graph Dynamo captures. Each model runs a 12-step flow-matching loop twice, compiled once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from conftest import assert_no_recompiles, recompile_report

from hero_compile import HeroBackend, HeroConfig
from hero_compile.bench.metrics import psnr

diffusers = pytest.importorskip("diffusers")

STEPS = 12


@dataclass
class Case:
    model: torch.nn.Module
    sample: torch.Tensor
    call: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    """``call(model, sample, timestep)``: the velocity, timestep in [0, 1000]."""


def cogvideox() -> Case:
    model = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=4, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=6,
    )
    text = torch.randn(1, 6, 8)
    return Case(model, torch.randn(1, 3, 4, 8, 8),
                lambda m, x, t: m(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0])


def wan() -> Case:
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=4, rope_max_seq_len=32,
    )
    text = torch.randn(1, 6, 8)
    return Case(model, torch.randn(1, 4, 2, 8, 8),
                lambda m, x, t: m(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0])


def flux() -> Case:
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(4, 4, 8),
    )
    context: dict[str, Any] = dict(encoder_hidden_states=torch.randn(1, 5, 8), pooled_projections=torch.randn(1, 8),
                                   img_ids=torch.randn(16, 3), txt_ids=torch.randn(5, 3))
    return Case(model, torch.randn(1, 16, 4),
                lambda m, x, t: m(hidden_states=x, timestep=t / 1000, return_dict=False, **context)[0])


CASES = {"cogvideox": cogvideox, "wan": wan, "flux": flux}


def generate(case: Case, model: torch.nn.Module) -> torch.Tensor:
    times = torch.linspace(1.0, 0.0, STEPS + 1)
    x = case.sample
    with torch.no_grad():
        for i in range(STEPS):
            x = x + float(times[i + 1] - times[i]) * case.call(model, x, torch.full((1,), 1000.0 * float(times[i])))
    return x


@pytest.mark.parametrize("name", sorted(CASES))
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
    assert graph.cheap_steps > 0 and graph.generations == 2
    assert all(psnr(result, reference) > 30 for result in results)


@pytest.mark.parametrize("name", sorted(CASES))
def test_disabled_equals_plain_compilation(name: str) -> None:
    torch.manual_seed(0)
    case = CASES[name]()
    case.model.eval()
    plain = generate(case, torch.compile(case.model, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()
    disabled = HeroBackend(HeroConfig(lowering="aot_eager", enabled=False))
    torch.testing.assert_close(generate(case, torch.compile(case.model, backend=disabled, fullgraph=True)), plain,
                               atol=1e-4, rtol=0)
