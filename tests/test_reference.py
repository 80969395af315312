"""Every variant hero builds, call by call against the reference cheap step of ``reference.py``.

Each test compiles one model under one configuration (fixed split, deep blocks present), runs two generations
of a flow-matching loop driven by the reference's outputs, and feeds hero the same inputs at every call. Hero
must place every call as the reference does (full or cheap) and match its output to a tight relative tolerance;
the reference's cheap outputs must differ from full compute by far more than that tolerance, so that a hero
computing something else (a wrong coefficient, refresh subset, cache or stream) cannot pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from models import DualStreamTransformer, make_conditioned_dit
from reference import Plan, Reference
from refresh_models import StyledTransformer
from torch import nn

import hero_compile
from hero_compile import GraphStats, HeroConfig, runtime
from hero_compile.testing.dit import DiTConfig, make_dit
from hero_compile.testing.sampling import euler_flow_matching
from hero_compile.token_selection import TokenSelector

STEPS = 12
GENERATIONS = 2
"""The second generation follows the first's timesteps, so its last step is full (``final_full_steps``)."""
GUIDANCE = 3.0
AOT_TOLERANCE = 1e-5
INDUCTOR_TOLERANCE = 2e-5
"""Largest ``max |hero - reference| / max |reference|`` over the calls of a test (measured: 0 under aot_eager,
at most 1.3e-6 under Inductor)."""
DISTINCT = 100.0
"""Every cheap call's reference output is at least this many tolerances away from full compute."""

Inputs = Callable[[torch.Tensor, torch.Tensor, int], dict[str, Any]]


@dataclass
class Case:
    """A model and how the loop calls it."""

    model: nn.Module
    noise: torch.Tensor
    grid: tuple[int, ...]
    """The token grid of the patch embedding: (frames, height, width) in tokens, or (tokens,)."""
    inputs: Inputs
    """``inputs(x, t, slot)``: the keyword arguments of a call at ``t`` in [0, 1000]; slot 1 is unconditional."""
    split: int
    deep_streams: int
    """Streams leaving the deep segment that the rest of the model reads."""
    cfg: bool = False
    """Two calls per step (conditional, unconditional) instead of one."""
    refreshes: bool = True
    """Whether hero refreshes the shallow blocks under residual caching; the cases where it does not say why."""
    period_ends: dict[str, str] = field(default_factory=dict)
    """Blocks that are periods of two interleaved stacks, and the module ending each (:meth:`Plan.from_stats`)."""


def prediction(model: Callable[..., Any], inputs: Mapping[str, Any]) -> torch.Tensor:
    output = model(**inputs)
    return output[0] if isinstance(output, tuple) else output


def context_or_zeros(context: torch.Tensor, slot: int) -> torch.Tensor:
    return context if slot == 0 else torch.zeros_like(context)


DIT = DiTConfig(channels=4, hidden=32, heads=2, depth=4, frames=2, height=8, width=8)


def dit() -> Case:
    return Case(make_dit(DIT), torch.randn(1, 4, 2, 8, 8), (2, 4, 4),
                lambda x, t, slot: {"x": x, "timestep": t}, split=2, deep_streams=1)


def dit_cfg() -> Case:
    context = torch.randn(1, DIT.hidden)
    return Case(make_conditioned_dit(DIT), torch.randn(1, 4, 2, 8, 8), (2, 4, 4),
                lambda x, t, slot: {"x": x, "timestep": t, "context": context_or_zeros(context, slot)},
                split=2, deep_streams=1, cfg=True)


def cogvideox_style() -> Case:
    """Text and video joined for attention, rotary written in place into the video part of queries and keys."""
    context = torch.randn(1, 5, 32)
    return Case(StyledTransformer("cogvideox", rotary=True, depth=4), torch.randn(1, 16, 4), (16,),
                lambda x, t, slot: {"x": x, "context": context_or_zeros(context, slot), "timestep": t},
                split=2, deep_streams=1, cfg=True)


def mmdit(**options: Any) -> Case:
    """``joint_final``: both streams leave the deep segment. ``single_depth``: a single-stream tail joins them;
    no deep-segment input has the joined stream's shape, so hero caches its output even under residual caching,
    and the shallow blocks, read by the deep segment only, do not run on cheap steps at all."""
    text = torch.randn(1, 6, 8)
    streams = 2 if options.get("joint_final") else 1
    return Case(DualStreamTransformer(depth=4, **options), torch.randn(1, 16, 4), (16,),
                lambda x, t, slot: {"x": x, "encoder_hidden_states": context_or_zeros(text, slot), "timestep": t},
                split=2, deep_streams=streams, cfg=True, refreshes="single_depth" not in options)


def text_conditioned(build: Callable[[], Any], grid: tuple[int, ...], text: torch.Tensor, split: int,
                     cfg: bool, **details: Any) -> Case:
    """A diffusers transformer called with the sample, the timestep and text states (zeros for the CFG call)."""
    built = build()
    return Case(built.model.eval(), built.sample, grid,
                lambda x, t, slot: {"hidden_states": x, "timestep": t, "return_dict": False,
                                    "encoder_hidden_states": context_or_zeros(text, slot)},
                split=split, deep_streams=1, cfg=cfg, **details)


def cogvideox() -> Case:
    """diffusers' CogVideoX. Hero finds no (frames, height, width) grid through its patch embedding and balances
    the subset over the flat sequence of 3 x 4 x 4 tokens."""
    from test_diffusers_models import cogvideox as build

    return text_conditioned(build, (48,), torch.randn(1, 6, 8), split=2, cfg=True)


# Wan and Flux refresh through their qk-norm (``torch.rms_norm``), their rotary tables (computed inside the block
# from position tables) and, for Wan, cross-attention to the text states.


def wan() -> Case:
    from test_diffusers_models import wan as build

    return text_conditioned(build, (2, 4, 4), torch.randn(1, 6, 8), split=2, cfg=True)


def flux() -> Case:
    from test_diffusers_models import flux as build

    built = build()
    context = {"encoder_hidden_states": torch.randn(1, 5, 8), "pooled_projections": torch.randn(1, 8),
               "img_ids": torch.randn(16, 3), "txt_ids": torch.randn(5, 3), "return_dict": False}
    return Case(built.model.eval(), built.sample, (16,),
                lambda x, t, slot: {"hidden_states": x, "timestep": t * 1e-3, **context},
                split=1, deep_streams=1)


def cosmos() -> Case:
    """Grouped-query keys (``repeat_interleave`` over heads), rotary tables and cross-attention to the text."""
    from test_diffusers_models import cosmos as build

    return text_conditioned(build, (2, 4, 4), torch.randn(1, 5, 16), split=1, cfg=False)


# HunyuanVideo and LTX-Video mask their attention (padded text keys): each query row is masked on its own, so the
# mask's rows, where it has some, are gathered with the queries. Two of the five text tokens are padding. LTX-Video
# takes its tokens already patchified: its grid is their flat sequence.
PADDED_TEXT = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])


def hunyuan_video() -> Case:
    from test_diffusers_models import hunyuan_video as build

    built = build()
    context = {"encoder_hidden_states": torch.randn(1, 5, 16), "encoder_attention_mask": PADDED_TEXT,
               "pooled_projections": torch.randn(1, 8), "guidance": torch.full((1,), 3000.0), "return_dict": False}
    return Case(built.model.eval(), built.sample, (2, 4, 4),
                lambda x, t, slot: {"hidden_states": x, "timestep": t, **context}, split=1, deep_streams=1)


def ltx_video() -> Case:
    from test_diffusers_models import ltx_video as build

    built = build()
    context = {"encoder_hidden_states": torch.randn(1, 5, 16), "encoder_attention_mask": PADDED_TEXT,
               "num_frames": 2, "height": 4, "width": 4, "return_dict": False}
    return Case(built.model.eval(), built.sample, (32,),
                lambda x, t, slot: {"hidden_states": x, "timestep": t, **context}, split=1, deep_streams=1)


def mochi() -> Case:
    """Mochi packs the valid text tokens after the video ones with ``nonzero()``: a run of data-dependent length
    beside the refreshed tokens (two of the five text tokens are padding)."""
    from test_diffusers_models import mochi as build

    built = build()
    context = {"encoder_hidden_states": torch.randn(1, 5, 16), "encoder_attention_mask": PADDED_TEXT,
               "return_dict": False}
    return Case(built.model.eval(), built.sample, (2, 4, 4),
                lambda x, t, slot: {"hidden_states": x, "timestep": t, **context}, split=1, deep_streams=1)


def latte() -> Case:
    """Spatial and temporal blocks alternate; hero's blocks are periods (temporal block i, then spatial block i + 1).
    Their tokens are the 4 x 4 spatial positions: the batch axis of the temporal attention (its sequence is the 2
    frames), the sequence axis of the spatial one; the text states repeated per frame and the per-frame
    modulation are shared by all positions. Each period ends with spatial block i + 1's output."""
    from test_diffusers_models import latte as build

    return text_conditioned(build, (4, 4), torch.randn(1, 5, 8), split=1, cfg=True,
                            period_ends={"temporal_transformer_blocks.0": "transformer_blocks.1"})


CASES: dict[str, Callable[[], Case]] = {
    "dit": dit, "dit_cfg": dit_cfg, "cogvideox_style": cogvideox_style,
    "mmdit": lambda: mmdit(joint_final=True), "mmdit_tail": lambda: mmdit(single_depth=2), "cogvideox": cogvideox,
    "wan": wan, "flux": flux, "cosmos": cosmos, "hunyuan_video": hunyuan_video, "ltx_video": ltx_video,
    "latte": latte, "mochi": mochi,
}


@dataclass
class Comparison:
    """Per call: hero's distance to the reference; per cheap call: the reference's distance to full compute."""

    errors: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


Hero = tuple[hero_compile.HeroBackend, Callable[..., Any]]
"""A hero backend and the model compiled with it."""


def compile_hero(case: Case, config: HeroConfig) -> Hero:
    backend = hero_compile.backend(config)
    return backend, torch.compile(case.model, backend=backend, fullgraph=True)


def compare(case: Case, config: HeroConfig, hero: Hero | None = None) -> tuple[Comparison, GraphStats]:
    """Run the loop on the reference's outputs, calling hero with the same inputs, and compare each call.
    ``hero``: a compiled model that already ran (its split measured); by default a new one."""
    backend, compiled = hero or compile_hero(case, config)
    comparison = Comparison()
    references: list[Reference] = []  # built at the first call, once hero's plan is in its stats

    def call(x: torch.Tensor, t: torch.Tensor, slot: int) -> torch.Tensor:
        inputs = case.inputs(x, t, slot)
        before = backend.stats().cheap_calls
        got = prediction(compiled, inputs)
        if not references:
            plan = Plan.from_stats(graph_of(backend), case.grid, case.period_ends)
            references.append(Reference(case.model, config, plan, prediction))
        reference = references[0]
        want = reference(inputs)
        assert want.cheap == (backend.stats().cheap_calls > before), f"call at t={t.tolist()}, slot {slot}"
        comparison.errors.append(relative(got, want.output))
        if want.cheap:
            comparison.gaps.append(relative(want.output, reference.full_compute(inputs)))
        return want.output

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not case.cfg:
            return call(x, t, 0)
        conditional, unconditional = call(x, t, 0), call(x, t, 1)
        return unconditional + GUIDANCE * (conditional - unconditional)

    with torch.no_grad():
        for _ in range(GENERATIONS):
            euler_flow_matching(velocity, case.noise, STEPS)
    return comparison, graph_of(backend)


def graph_of(backend: hero_compile.HeroBackend) -> GraphStats:
    (graph,) = backend.stats().graphs
    assert graph.accelerated, graph.fallback_reason
    return graph


def hero_config(case: Case, lowering: str, **settings: Any) -> HeroConfig:
    order = settings.get("extrapolation_order", 1)
    return HeroConfig(lowering=lowering, split=case.split, warmup_steps=max(2, order + 1), interval=4,
                      final_full_steps=1, **settings)


def check_plan(case: Case, config: HeroConfig, graph: GraphStats) -> None:
    """Hero planned what the configuration asks for: the split, the deep streams, and (residual caching, where
    the case refreshes) every shallow block refreshed with the subset size of the case's grid."""
    assert graph.split == case.split and len(graph.deep_streams) == case.deep_streams
    if config.cache_target == "output" or not case.refreshes or not config.token_refresh:
        assert graph.tokens_refreshed_per_cheap_step == {}, graph.tokens_refreshed_per_cheap_step
        return
    size = TokenSelector(case.grid, config.patch_size, config.refresh_ratio).size
    assert graph.tokens_refreshed_per_cheap_step == {path: size for path in graph.blocks[: case.split]}, (
        graph.refresh_skipped)


def check(name: str, lowering: str, tolerance: float, **settings: Any) -> None:
    torch.manual_seed(0)
    check_case(CASES[name](), lowering, tolerance, **settings)


def check_case(case: Case, lowering: str, tolerance: float, **settings: Any) -> None:
    config = hero_config(case, lowering, **settings)
    comparison, graph = compare(case, config)
    check_plan(case, config, graph)
    check_comparison(comparison, graph.cheap_calls, tolerance)


def check_comparison(comparison: Comparison, cheap_calls: int, tolerance: float) -> None:
    """Every call within ``tolerance`` of the reference, and hero's ``cheap_calls`` the reference's cheap calls,
    each far from full compute."""
    assert cheap_calls == len(comparison.gaps) > 0
    error, gap = max(comparison.errors), min(comparison.gaps)
    assert error <= tolerance, f"a call differs from the reference by {error:.1e} of its scale"
    assert gap >= DISTINCT * tolerance, f"a cheap call of the reference is only {gap:.1e} away from full compute"


def residual(ratio: float, order: int) -> dict[str, Any]:
    return {"cache_target": "residual", "refresh_ratio": ratio, "extrapolation_order": order}


def output(order: int) -> dict[str, Any]:
    return {"cache_target": "output", "extrapolation_order": order}


DAMPED = residual(0.25, 1) | {"extrapolation_damping": 0.5}

AOT_EAGER = {
    **{f"dit-output-order{k}": ("dit", output(k)) for k in (0, 1, 2)},
    **{f"dit-residual-0.25-order{k}": ("dit", residual(0.25, k)) for k in (0, 1, 2)},
    "dit-residual-0.5-order1": ("dit", residual(0.5, 1)),
    "dit-residual-0.25-order1-damped": ("dit", DAMPED),
    "dit_cfg-output-order2-damped": ("dit_cfg", output(2) | {"extrapolation_damping": 0.5}),
    "dit_cfg-output-order1": ("dit_cfg", output(1)),
    "dit_cfg-residual-0.25-order2": ("dit_cfg", residual(0.25, 2)),
    "cogvideox_style-residual-0.25-order1": ("cogvideox_style", residual(0.25, 1)),
    "mmdit-output-order1": ("mmdit", output(1)),
    "mmdit-residual-0.5-order2": ("mmdit", residual(0.5, 2)),
    "mmdit_tail-residual-0.25-order1": ("mmdit_tail", residual(0.25, 1)),
    "cogvideox-output-order0": ("cogvideox", output(0)),
    "cogvideox-residual-0.25-order1": ("cogvideox", residual(0.25, 1)),
    "wan-output-order1": ("wan", output(1)),
    "wan-residual-0.25-order1": ("wan", residual(0.25, 1)),
    "flux-output-order2": ("flux", output(2)),
    "flux-residual-0.5-order1": ("flux", residual(0.5, 1)),
    "cosmos-residual-0.25-order1": ("cosmos", residual(0.25, 1)),
    "hunyuan_video-residual-0.25-order1": ("hunyuan_video", residual(0.25, 1)),
    "ltx_video-residual-0.25-order1": ("ltx_video", residual(0.25, 1)),
    "latte-output-order1": ("latte", output(1)),
    "latte-residual-0.25-order1": ("latte", residual(0.25, 1)),
    "mochi-residual-0.25-order1": ("mochi", residual(0.25, 1)),
}


@pytest.mark.parametrize(("name", "settings"), AOT_EAGER.values(), ids=AOT_EAGER.keys())
def test_every_call_equals_the_reference_under_aot_eager(name: str, settings: dict[str, Any]) -> None:
    check(name, "aot_eager", AOT_TOLERANCE, **settings)


INDUCTOR = {
    "dit_cfg-residual-0.25-order1": ("dit_cfg", residual(0.25, 1)),
    "cogvideox-residual-0.5-order2": ("cogvideox", residual(0.5, 2)),
    "wan-residual-0.5-order1": ("wan", residual(0.5, 1)),
}


@pytest.mark.parametrize(("name", "settings"), INDUCTOR.values(), ids=INDUCTOR.keys())
def test_every_call_equals_the_reference_under_inductor(name: str, settings: dict[str, Any]) -> None:
    check(name, "inductor", INDUCTOR_TOLERANCE, **settings)


def nudged_coefficients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hero's Lagrange weights off by 1e-3 (their sum kept at one)."""
    right = runtime.extrapolation_coefficients

    def wrong(*args: Any) -> list[float]:
        weights = right(*args)
        return [weights[0] + 1e-3, weights[1] - 1e-3, *weights[2:]]

    monkeypatch.setattr(runtime, "extrapolation_coefficients", wrong)


def shifted_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hero's call slots refresh the tokens after the ones chosen (the reference builds selectors of its own)."""
    fresh_copy = TokenSelector.fresh_copy

    def shifted(selector: TokenSelector) -> TokenSelector:
        copy = fresh_copy(selector)
        select, count = copy.select, len(copy.staleness)
        copy.select = lambda: np.sort((select() + 1) % count)
        return copy

    monkeypatch.setattr(TokenSelector, "fresh_copy", shifted)


def damping_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hero's runtime extrapolates undamped whatever ``extrapolation_damping`` says."""
    right = runtime.extrapolation_coefficients
    monkeypatch.setattr(runtime, "extrapolation_coefficients", lambda *args: right(*args[:4]))


@pytest.mark.parametrize("break_hero", [nudged_coefficients, shifted_subset, damping_ignored])
def test_the_comparison_fails_when_hero_is_broken(
    break_hero: Callable[[pytest.MonkeyPatch], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    break_hero(monkeypatch)
    with pytest.raises(AssertionError, match="differs from the reference"):
        check("dit", "aot_eager", AOT_TOLERANCE, **DAMPED)
