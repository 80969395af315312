"""Every tensor the runtime feeds back into a compiled variant has the layout that variant was compiled with.

Inductor asserts the sizes and strides of every input. The model's blocks return transposed views (channels-first
memory), so a stand-in, cache or history entry made contiguous where the variant expects the block's own layout
crashes on its first call. One model runs under Inductor on every path: the measuring variant (``split="auto"``),
full calls, cheap calls with token refresh and residual extrapolation, and cheap calls with output caching; each
call is compared with eager full compute or with the reference cheap step of ``reference.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import fresh_dynamo
from refresh_models import StyledTransformer
from test_reference import (
    INDUCTOR_TOLERANCE,
    Case,
    Comparison,
    Hero,
    check_case,
    check_comparison,
    compare,
    compile_hero,
    graph_of,
    output,
    prediction,
    relative,
)

from hero_compile import GraphStats, HeroConfig
from hero_compile.testing.sampling import euler_flow_matching

STEPS = 12


def transposed_case() -> Case:
    torch.manual_seed(0)
    context = torch.randn(1, 5, 32)
    return Case(StyledTransformer("transposed", rotary=True, depth=4), torch.randn(1, 16, 4), (16,),
                lambda x, t, slot: {"x": x, "context": context, "timestep": t}, split=2, deep_streams=1)


MEASURED = HeroConfig(split="auto", cache_target="residual", warmup_steps=2, interval=4, final_full_steps=0)
"""The split measured in the first generation; no final full steps, so that the reference, which starts with the
second generation, places its calls as hero does."""


@dataclass
class MeasuredRun:
    """The first generation's full calls (measuring ones included) against full compute, then two generations
    call by call against the reference."""

    full_call_errors: list[float]
    first_cheap_calls: int
    comparison: Comparison
    graph: GraphStats


def first_generation(case: Case, hero: Hero) -> list[float]:
    """Run one generation on eager full compute's outputs; each full call's distance to it."""
    backend, compiled = hero
    errors: list[float] = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inputs = case.inputs(x, t, 0)
        cheap_before = backend.stats().cheap_calls
        got, want = prediction(compiled, inputs), prediction(case.model, inputs)
        if backend.stats().cheap_calls == cheap_before:
            errors.append(relative(got, want))
        return want

    with torch.no_grad():
        euler_flow_matching(velocity, case.noise, STEPS)
    return errors


@pytest.fixture(scope="module")
def measured() -> MeasuredRun:
    """One compiled model for the measuring, full and refresh paths (three Inductor compilations). Built before
    the per-test reset: forget what earlier modules compiled, or Dynamo makes the token count dynamic."""
    fresh_dynamo()
    case = transposed_case()
    hero = compile_hero(case, MEASURED)
    errors = first_generation(case, hero)
    first_cheap_calls = graph_of(hero[0]).cheap_calls
    comparison, graph = compare(case, MEASURED, hero)
    return MeasuredRun(errors, first_cheap_calls, comparison, graph)


def test_measuring_and_full_calls_equal_full_compute(measured: MeasuredRun) -> None:
    assert len(measured.full_call_errors) >= MEASURED.profile_steps
    assert max(measured.full_call_errors) <= INDUCTOR_TOLERANCE
    assert measured.first_cheap_calls > 0


def test_refreshed_cheap_calls_equal_the_reference(measured: MeasuredRun) -> None:
    graph = measured.graph
    assert graph.split is not None and 0 < graph.split < len(graph.blocks)
    assert set(graph.tokens_refreshed_per_cheap_step) == set(graph.blocks[: graph.split]), graph.refresh_skipped
    check_comparison(measured.comparison, graph.cheap_calls - measured.first_cheap_calls,
                     INDUCTOR_TOLERANCE)


def test_output_caching_equals_the_reference() -> None:
    check_case(transposed_case(), "inductor", INDUCTOR_TOLERANCE, **output(1))
