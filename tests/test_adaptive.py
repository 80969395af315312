"""The adaptive schedule (``HeroConfig(schedule="adaptive")``): one graph, decisions from host values only, one
decision per step for every call of it, the threshold's two ends, and the in-graph estimate against eager."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import Call, Recorder, assert_no_recompiles, recompile_report
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributed import _functional_collectives as functional_collectives

from hero_compile import HeroBackend, HeroConfig
from hero_compile import adaptive as adaptive_module
from hero_compile.adaptive import AdaptiveSchedule, HostReading
from hero_compile.runtime import HeroRuntime
from hero_compile.testing.dit import DiT, DiTConfig, flow_matching_sample, make_dit, patchify
from hero_compile.testing.sampling import euler_flow_matching

SMALL = DiTConfig(hidden=32, heads=2, depth=4, frames=1, height=8, width=8)
STEPS = 16
CAP = 3


def adaptive(threshold: float, lowering: str = "aot_eager", **fields: Any) -> HeroConfig:
    return HeroConfig(lowering=lowering, schedule="adaptive", adaptive_threshold=threshold,  # type: ignore[arg-type]
                      max_cheap_steps=CAP, **fields)


@pytest.fixture(scope="module")
def model() -> DiT:
    return make_dit(SMALL)


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def run(model: DiT, noise: torch.Tensor, config: HeroConfig, generations: int = 1) -> tuple[torch.Tensor, Recorder]:
    backend = HeroBackend(config)
    recorder = Recorder(torch.compile(model, backend=backend, fullgraph=True), backend)
    with torch.no_grad():
        outputs = [flow_matching_sample(recorder, noise, STEPS) for _ in range(generations)]
    return outputs[-1], recorder


def cheap_runs(calls: list[Call]) -> list[int]:
    """Lengths of the runs of consecutive cheap calls."""
    runs = [0]
    for call in calls:
        if call.full:
            runs.append(0)
        else:
            runs[-1] += 1
    return [n for n in runs if n]


def test_one_graph_no_recompiles_with_fullgraph(model: DiT, noise: torch.Tensor) -> None:
    _, recorder = run(model, noise, adaptive(0.05), generations=2)
    assert_no_recompiles(recompile_report())
    (graph,) = recorder.backend.stats().graphs
    assert graph.accelerated and graph.cheap_calls > 0 and graph.full_calls > 2 * 2


def test_threshold_zero_computes_every_step_as_plain_compile(model: DiT, noise: torch.Tensor) -> None:
    output, recorder = run(model, noise, adaptive(0.0))
    assert all(call.full for call in recorder.calls)
    with torch.no_grad():
        plain = flow_matching_sample(torch.compile(model, backend="aot_eager", fullgraph=True), noise, STEPS)
    assert torch.equal(output, plain)


def test_a_huge_threshold_runs_cheap_steps_up_to_the_cap(model: DiT, noise: torch.Tensor) -> None:
    _, recorder = run(model, noise, adaptive(1e30))
    warmup = HeroConfig().warmup_steps
    assert all(call.full for call in recorder.calls[:warmup])
    runs = cheap_runs(recorder.calls)
    assert runs[:-1] == [CAP] * (len(runs) - 1) and 0 < runs[-1] <= CAP


def test_the_estimate_equals_the_eager_relative_l1_distance_of_the_stack_input(
        model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap calls measure the distance from the last full step (in the graph), full calls from the one before."""
    measured: list[tuple[int, int, float]] = []
    reading_init = HostReading.__init__

    def keep(self: HostReading, step: int, since_full_step: int, value: torch.Tensor) -> None:
        measured.append((step, since_full_step, float(value)))
        reading_init(self, step, since_full_step, value)

    monkeypatch.setattr(HostReading, "__init__", keep)
    _, recorder = run(model, noise, adaptive(0.08))

    def stack_input(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.patch_embed(patchify(x, SMALL.patch)) + model.pos_embed

    expected: list[tuple[int, int, float]] = []
    full: tuple[int, torch.Tensor] | None = None
    for step, call in enumerate(recorder.calls):
        current = stack_input(call.inputs[0])
        if full is not None:
            distance = float((current - full[1]).abs().sum() / full[1].abs().sum())
            expected.append((step, full[0], distance))
        if call.full:
            full = (step, current)
    assert sum(not call.full for call in recorder.calls) > 2 and any(call.full for call in recorder.calls[3:])
    assert [m[:2] for m in measured] == [e[:2] for e in expected]
    torch.testing.assert_close([m[2] for m in measured], [e[2] for e in expected], rtol=1e-5, atol=1e-7)


@settings(deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), zero_references=st.booleans())
def test_the_distance_is_the_relative_l1_over_every_stream(shapes: list[list[int]], seed: int,
                                                            zero_references: bool) -> None:
    """The few-op distance a full call computes eagerly (and the cheap graph in its estimate) against the
    definition, summed in float64; references of zeros give a large distance, never NaN."""
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=generator) for shape in shapes]
    references = [torch.zeros(shape) if zero_references else torch.randn(shape, generator=generator)
                  for shape in shapes]
    distance = adaptive_module.relative_l1_distance(values, references)
    moved = sum(float((v.double() - r.double()).abs().sum()) for v, r in zip(values, references))
    size = sum(float(r.double().abs().sum()) for r in references)
    assert distance.dtype == torch.float32 and distance.shape == ()
    if zero_references:
        assert float(distance) > 1e30
    else:
        assert float(distance) == pytest.approx(moved / size, rel=1e-5)


def guided(model: Callable[..., torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
    """Guidance as two calls per step; the second call's input moves faster, so that its own distances would
    call for full steps earlier than the first call's."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = model(x, t)
        uncond = model(x * (1.0 + 4.0 * (1.0 - t / 1000.0)), t)
        return uncond + 2.0 * (cond - uncond)

    with torch.no_grad():
        return euler_flow_matching(velocity, noise, STEPS)


def test_both_calls_of_a_guided_step_take_the_same_decision(model: DiT, noise: torch.Tensor) -> None:
    backend = HeroBackend(adaptive(0.1))
    recorder = Recorder(torch.compile(model, backend=backend, fullgraph=True), backend)
    guided(recorder, noise)
    calls = recorder.calls
    assert len(calls) == 2 * STEPS
    decisions = [(cond.full, uncond.full) for cond, uncond in zip(calls[::2], calls[1::2])]
    assert all(a == b for a, b in decisions), decisions
    assert {full for full, _ in decisions} == {True, False}


@dataclass
class CallClock:
    """The runtime calls so far, and the call each reading was started by."""

    calls: int = 0
    started_by: dict[int, int] = field(default_factory=dict)
    """``id(reading)``: the call that started it (the schedule keeps every reading alive until it is read)."""

    def age(self, reading: HostReading) -> int:
        """Calls begun since ``reading``'s call."""
        return self.calls - self.started_by[id(reading)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[CallClock]:
    clock = CallClock()
    runtime_call, reading_init = HeroRuntime.__call__, HostReading.__init__

    def counted_call(self: HeroRuntime, *inputs: Any) -> Any:
        clock.calls += 1
        return runtime_call(self, *inputs)

    def tagged_init(self: HostReading, *args: Any) -> None:
        reading_init(self, *args)
        clock.started_by[id(self)] = clock.calls

    monkeypatch.setattr(HeroRuntime, "__call__", counted_call)
    monkeypatch.setattr(HostReading, "__init__", tagged_init)
    yield clock


READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")
"""What reads a tensor's value on the host (on a device tensor: a wait for the device)."""


def test_the_decision_reads_only_host_values_from_earlier_calls(
        model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch, clock: CallClock) -> None:
    """Every tensor value the schedule reads, deciding or recording, is the host copy of a reading started by an
    earlier call: never a value of this call's graph, never a device tensor (on a GPU that would wait)."""
    read: list[tuple[torch.Tensor, HostReading | None, int]] = []
    readings: dict[int, HostReading] = {}
    originals = {name: getattr(torch.Tensor, name) for name in READS if hasattr(torch.Tensor, name)}

    def spy(name: str) -> Callable[..., Any]:
        def read_value(tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
            reading = readings.get(id(tensor))
            read.append((tensor, reading, clock.age(reading) if reading is not None else 0))
            return originals[name](tensor, *a, **k)
        return read_value

    def watched(method: Callable[..., Any]) -> Callable[..., Any]:
        def run_watched(self: AdaptiveSchedule, *args: Any) -> Any:
            readings.update((id(reading._copy._host), reading) for reading in self.pending)
            with monkeypatch.context() as patch:
                for name in originals:
                    patch.setattr(torch.Tensor, name, spy(name))
                return method(self, *args)
        return run_watched

    for name in ("is_full", "ran_cheap", "ran_full"):
        monkeypatch.setattr(AdaptiveSchedule, name, watched(getattr(AdaptiveSchedule, name)))
    guided(torch.compile(model, backend=HeroBackend(adaptive(0.1)), fullgraph=True), noise)
    assert read, "the decisions read the readings"
    for tensor, reading, age in read:
        assert reading is not None and reading._copy._host is tensor, "the schedule read a tensor that is no reading"
        assert age >= 1, "the schedule read a reading started by the current call"


def test_readings_still_on_their_way_are_not_waited_for(
        model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch, clock: CallClock) -> None:
    """A device that lags three calls behind: the decision goes on with the readings that have landed and never
    reads one still on its way."""
    monkeypatch.setattr(HostReading, "ready", lambda self: clock.age(self) >= 3)
    value = HostReading.value
    seen: list[int] = []

    def checked_value(self: HostReading) -> float:
        assert clock.age(self) >= 3, "read before its copy landed"
        seen.append(clock.age(self))
        return value(self)

    monkeypatch.setattr(HostReading, "value", checked_value)
    run(model, noise, adaptive(0.05))
    assert seen, "readings are used once they land"


def lagging_device(monkeypatch: pytest.MonkeyPatch, clock: CallClock, lag: int = 3) -> list[int]:
    """A device whose readings land ``lag`` calls after the call that started them, or once waited for; returns
    the ages of the readings waited for, as they are waited for."""
    waits: list[int] = []

    def wait(self: HostReading) -> None:
        waits.append(clock.age(self))
        self.waited = True  # type: ignore[attr-defined]

    monkeypatch.setattr(HostReading, "ready", lambda self: getattr(self, "waited", False) or clock.age(self) >= lag)
    monkeypatch.setattr(HostReading, "wait", wait)
    return waits


@pytest.fixture
def deterministic_algorithms() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def full_pattern(recorder: Recorder) -> list[bool]:
    return [call.full for call in recorder.calls]


def test_a_lagging_device_can_change_the_decisions(model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
                                                   clock: CallClock) -> None:
    """Why deterministic algorithms need a wait: readings that land later change which full steps are taken."""
    _, prompt = run(model, noise, adaptive(0.05))
    waits = lagging_device(monkeypatch, clock)
    _, lagging = run(model, noise, adaptive(0.05))
    assert full_pattern(lagging) != full_pattern(prompt) and not waits


def test_under_deterministic_algorithms_a_lagging_device_decides_as_a_prompt_one(
        model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch, clock: CallClock,
        deterministic_algorithms: None) -> None:
    """Each step waits for the earlier steps' readings (never the current call's), and decides as on the CPU."""
    prompt_output, prompt = run(model, noise, adaptive(0.05))
    waits = lagging_device(monkeypatch, clock)
    output, lagging = run(model, noise, adaptive(0.05))
    assert full_pattern(lagging) == full_pattern(prompt) and torch.equal(output, prompt_output)
    assert waits and min(waits) >= 1


def test_no_step_is_taken_cheap_before_a_reading_or_a_prior_says_so(
        model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch, clock: CallClock) -> None:
    """A threshold under every measured rate computes every step, on a device whose readings land three calls
    late too: before the first reading lands, a first generation runs full and later ones decide from the
    previous generation's first rate."""
    lagging_device(monkeypatch, clock)
    output, recorder = run(model, noise, adaptive(1e-6, warmup_steps=1), generations=2)
    assert all(call.full for call in recorder.calls)
    with torch.no_grad():
        plain = flow_matching_sample(torch.compile(model, backend="aot_eager", fullgraph=True), noise, STEPS)
    assert torch.equal(output, plain)


def test_the_previous_generation_s_first_rate_stands_in_until_a_reading_lands(
        model: DiT, noise: torch.Tensor, monkeypatch: pytest.MonkeyPatch, clock: CallClock) -> None:
    lagging_device(monkeypatch, clock)
    _, recorder = run(model, noise, adaptive(0.2, warmup_steps=1), generations=2)
    first, second = full_pattern(recorder)[:STEPS], full_pattern(recorder)[STEPS:]
    # Step 1's reading lands at step 4: until then the first generation has nothing to decide from.
    assert first[:4] == [True] * 4 and False in first[4:]
    assert second[:2] == [True, False]


def test_a_prior_from_other_timesteps_is_not_used() -> None:
    """The previous generation's first rate stands in only when this one follows its timesteps (its length known)."""
    config = adaptive(0.05, warmup_steps=1)
    assert not AdaptiveSchedule(prior_rate=0.01).is_full(1, config, total_steps=STEPS)
    assert AdaptiveSchedule(prior_rate=0.01).is_full(1, config, total_steps=None)
    assert AdaptiveSchedule(prior_rate=0.06).is_full(1, config, total_steps=STEPS)
    assert AdaptiveSchedule().is_full(1, config, total_steps=STEPS)


class AllReducedBlocks(nn.Module):
    """Blocks that all-reduce their output over the process group, as context-parallel attention communicates."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + torch.sin(timestep)[:, None, None]
        for block in self.blocks:
            h = h + functional_collectives.all_reduce(torch.tanh(block(h)), "sum", dist.group.WORLD)
        return self.out(h)


def full_steps_at_rates(rates: list[float], config: HeroConfig) -> list[int]:
    """The full steps an adaptive schedule takes when the stack input moves ``rates[step]`` per step; every
    reading lands at once."""
    schedule = AdaptiveSchedule()
    full = []
    for step, rate in enumerate(rates):
        if schedule.is_full(step, config, None):
            previous = schedule.last_full_step
            schedule.ran_full(step, torch.tensor(rate * (step - previous)) if previous >= 0 else None)
            full.append(step)
        else:
            schedule.ran_cheap(step, torch.tensor(rate * (step - schedule.last_full_step)))
    return full


def test_a_rate_wavering_at_a_spacing_boundary_keeps_the_spacing_even(monkeypatch: pytest.MonkeyPatch) -> None:
    # threshold / rate wavers between 1.96 and 2.04: full steps 2 and 3 apart by the ceiling alone. For as many full
    # steps, mixed gaps extrapolate further than even ones (measured on the DiT at 50 steps: 1.3 dB lost).
    config = adaptive(0.02).replace(max_cheap_steps=4)
    wavering = random.Random(0)
    rates = [wavering.uniform(0.0098, 0.0102) for _ in range(40)]
    gaps = {b - a for a, b in itertools.pairwise(full_steps_at_rates(rates, config)[config.warmup_steps - 1 :])}
    assert len(gaps) == 1
    monkeypatch.setattr(adaptive_module, "SPACING_MARGIN", 0.0)
    gaps = {b - a for a, b in itertools.pairwise(full_steps_at_rates(rates, config)[config.warmup_steps - 1 :])}
    assert gaps == {2, 3}


def test_a_rate_that_changes_past_the_margin_changes_the_spacing() -> None:
    config = adaptive(0.02).replace(max_cheap_steps=4)
    full = full_steps_at_rates([0.0105] * 20 + [0.0055] * 20, config)  # ideal spacing 1.9, then 3.6
    gaps = [b - a for a, b in itertools.pairwise(full)]
    assert gaps[1:5] == [2, 2, 2, 2] and gaps[-3:] == [4, 4, 4]


def test_a_still_input_runs_every_step_in_full_at_threshold_zero_and_up_to_the_cap_above() -> None:
    assert full_steps_at_rates([0.0] * 12, adaptive(0.0)) == list(range(12))
    assert full_steps_at_rates([0.0] * 12, adaptive(0.05)) == [0, 1, 1 + CAP + 1, 1 + 2 * (CAP + 1)]


def test_the_adaptive_schedule_is_refused_under_context_parallelism(tmp_path: Path) -> None:
    """Ranks measuring their own shards could decide differently and hang: a graph that communicates runs the
    fixed schedule, and stats() says why."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        backend = HeroBackend(adaptive(0.0))
        compiled = torch.compile(AllReducedBlocks(), backend=backend, fullgraph=True)
        with torch.no_grad():
            euler_flow_matching(compiled, torch.randn(1, 8, 4), 12)
    finally:
        dist.destroy_process_group()
    (graph,) = backend.stats().graphs
    assert graph.schedule_reason is not None and "context parallelism" in graph.schedule_reason
    # threshold 0 would run every step in full; the fixed schedule runs cheap steps
    assert graph.accelerated and graph.cheap_calls > 0, graph.fallback_reason
