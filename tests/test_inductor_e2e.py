"""HERO with real Inductor lowering. Compiling is slow on CPU, so one module fixture compiles and runs
everything once (hero, plain Inductor, hero disabled) and the tests read its results."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import BAD_EXTRAPOLATION, Recorder, assert_no_recompiles, fresh_dynamo, recompile_report

from hero_compile import HeroBackend, HeroConfig
from hero_compile.measurement import psnr_over_reference_range
from hero_compile.schedule import is_full_step
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

pytestmark = pytest.mark.shared_compile

DIT12 = DiTConfig(depth=12, hidden=32, heads=2, frames=1, height=8, width=8)
STEPS = 30


@pytest.fixture(scope="module")
def e2e() -> SimpleNamespace:
    model = make_dit(DIT12)
    noise = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    probes = [(noise, torch.tensor([t])) for t in (1000.0, 480.0, 15.0)]

    fresh_dynamo()
    config = HeroConfig()
    assert config.lowering == "inductor"
    backend = HeroBackend(config)
    recorder = Recorder(torch.compile(model, backend=backend, fullgraph=True), backend)
    with torch.no_grad():
        reference = flow_matching_sample(model, noise, steps=STEPS)
        results, calls = [], []
        for _ in range(2):
            results.append(flow_matching_sample(recorder, noise, steps=STEPS))
            calls.append(recorder.take())
    stats, report = copy.deepcopy(backend.stats()), recompile_report()

    fresh_dynamo()
    plain = torch.compile(model, backend="inductor", fullgraph=True)
    with torch.no_grad():
        plain_full = [(c, plain(*c.inputs)) for gen in calls for c in gen if c.full]
        plain_probes = [plain(*p) for p in probes]

    fresh_dynamo()
    disabled_backend = HeroBackend(HeroConfig(enabled=False))
    disabled = torch.compile(model, backend=disabled_backend, fullgraph=True)
    with torch.no_grad():
        disabled_probes = [disabled(*p) for p in probes]
        eager_probes = [model(*p) for p in probes]
    fresh_dynamo()
    return SimpleNamespace(
        config=config,
        reference=reference,
        results=results,
        calls=calls,
        stats=stats,
        report=report,
        plain_full=plain_full,
        plain_probes=plain_probes,
        disabled_probes=disabled_probes,
        disabled_stats=copy.deepcopy(disabled_backend.stats()),
        eager_probes=eager_probes,
    )


def test_disabled_equals_plain_inductor(e2e: SimpleNamespace) -> None:
    for disabled, plain, eager in zip(e2e.disabled_probes, e2e.plain_probes, e2e.eager_probes):
        torch.testing.assert_close(disabled, plain, atol=1e-4, rtol=0)
        torch.testing.assert_close(disabled, eager, atol=1e-4, rtol=0)
    (graph,) = e2e.disabled_stats.graphs
    assert not graph.accelerated


def test_full_steps_equal_plain_inductor(e2e: SimpleNamespace) -> None:
    warmup = e2e.config.warmup_steps
    for gen in e2e.calls:
        assert all(c.full for c in gen[:warmup])
    assert len(e2e.plain_full) >= 2 * warmup
    for call, plain in e2e.plain_full:
        torch.testing.assert_close(call.output, plain, atol=1e-4, rtol=0)


def test_generation_one_graph_no_recompiles(e2e: SimpleNamespace) -> None:
    assert len(e2e.stats.graphs) == 1
    assert_no_recompiles(e2e.report)
    (graph,) = e2e.stats.graphs
    assert graph.accelerated and graph.generations == 2
    assert graph.cheap_calls > 0 and graph.full_calls + graph.cheap_calls == 2 * STEPS
    # the defaults measure no profile (output caching: the split changes nothing); both generations are equal
    assert [c.full for c in e2e.calls[0]] == [is_full_step(s, e2e.config, None) for s in range(STEPS)]
    assert [c.full for c in e2e.calls[1]] == [is_full_step(s, e2e.config, STEPS) for s in range(STEPS)]
    assert torch.equal(e2e.results[0], e2e.results[1])


@pytest.mark.quality_bar(*BAD_EXTRAPOLATION)
def test_generation_quality(e2e: SimpleNamespace) -> None:
    for result in e2e.results:
        # measured 61.7 dB; 51.0 with extrapolation off (scripts/calibrate_bars.py)
        assert psnr_over_reference_range(result, e2e.reference) >= 56.0
