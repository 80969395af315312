"""What a GPU run relies on, checked on the CPU with test doubles.

- CUDA graph replay writes a captured graph's outputs into the same memory on every replay: a cache that holds a
  variant's output as it is would change under the runtime. :class:`ReplayOverwrites` does to every variant what
  replay does, and the generations must not change.
- A timestep on a GPU read on the host is a sync. Once a generation has been read, the next ones are predicted and
  checked when a non-blocking copy lands: with the reads of the timestep made to look like device reads, the
  steady state must read nothing at once, give the same generation, and catch a schedule that departs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch._functorch.aot_autograd as aot_autograd
from models import make_conditioned_dit
from test_backend import CFG_DIT, cfg_two_calls, dit_noise

import hero_compile.pipeline
import hero_compile.runtime
import hero_compile.timestep_reads
from hero_compile import HeroBackend, HeroConfig

AOT = HeroConfig(lowering="aot_eager")
CONFIGS = {
    "output caching": AOT,
    "residual, refresh, measured split": AOT.replace(cache_target="residual"),
    "adaptive schedule": AOT.replace(schedule="adaptive", adaptive_threshold=0.1),
}


class ReplayOverwrites:
    """A compiled variant run as CUDA graph replay runs it: each call writes its outputs into the memory of the
    previous call's outputs, and returns that memory."""

    def __init__(self, compiled: Callable[..., Any]) -> None:
        self.compiled = compiled
        self.outputs: list[torch.Tensor] | None = None

    def __call__(self, *inputs: Any) -> Any:
        results = self.compiled(*inputs)
        if self.outputs is None or [o.shape for o in self.outputs] != [r.shape for r in results]:
            self.outputs = [r.detach().clone() for r in results]
        else:
            for output, result in zip(self.outputs, results):
                output.copy_(result)
        return type(results)(self.outputs)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = make_conditioned_dit(CFG_DIT)
    context = torch.randn(1, CFG_DIT.hidden, generator=torch.Generator().manual_seed(4))
    return model, dit_noise(CFG_DIT, seed=3), context


def generations(setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], config: HeroConfig,
                steps: Sequence[int] = (12, 12)) -> tuple[list[torch.Tensor], HeroBackend]:
    """Guided generations (two calls a step) of ``steps`` steps each, with one compiled model. The velocity is
    cloned at once, as a CUDA graph's output must be before the graph runs again."""
    model, noise, context = setup
    backend = HeroBackend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)

    def call(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return compiled(x, t, c).clone()

    return [cfg_two_calls(call, noise, context, n) for n in steps], backend


@pytest.fixture
def replayed_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    lower = hero_compile.pipeline.lower
    monkeypatch.setattr(hero_compile.pipeline, "lower", lambda *args: ReplayOverwrites(lower(*args)))


@pytest.mark.parametrize("name", CONFIGS)
def test_variants_that_overwrite_their_outputs_give_the_same_generations(
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], name: str, request: pytest.FixtureRequest
) -> None:
    expected, backend = generations(setup, CONFIGS[name])
    assert backend.stats().cheap_calls > 0
    torch._dynamo.reset()
    request.getfixturevalue("replayed_variants")
    replayed, replayed_backend = generations(setup, CONFIGS[name])
    assert replayed_backend.stats().cheap_calls > 0
    for got, want in zip(replayed, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert replayed_backend.profiles() == backend.profiles(), "the measured variability is the same"


class DeviceReads:
    """Makes the runtime treat timesteps as device tensors (reading one on the host is a sync) and counts the
    reads it makes at once, of any value."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        monkeypatch.setattr(hero_compile.timestep_reads, "is_on_host", lambda value: False)
        for module in (hero_compile.timestep_reads, hero_compile.runtime):
            monkeypatch.setattr(module, "read_now", self._counted(module.read_now))

    def _counted(self, read_now: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def read(value: torch.Tensor) -> torch.Tensor:
            self.count += 1
            return read_now(value)
        return read


def test_the_steady_state_reads_no_device_value(
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, _ = generations(setup, AOT, steps=(12, 8))
    expected += generations(setup, AOT.replace(interval=1), steps=(8,))[0]  # every step in full
    torch._dynamo.reset()
    reads = DeviceReads(monkeypatch)
    model, noise, context = setup
    backend = HeroBackend(AOT)
    compiled = torch.compile(model, backend=backend, fullgraph=True)

    def generate(steps: int) -> tuple[torch.Tensor, int]:
        before = reads.count
        result = cfg_two_calls(lambda x, t, c: compiled(x, t, c).clone(), noise, context, steps)
        return result, reads.count - before

    first, first_reads = generate(12)
    assert first_reads == 2 * 12, "the first generation reads each call's timestep"
    second, second_reads = generate(12)
    assert second_reads == 1, "the second reads its first call's only: the first generation's calls are then known"
    third, third_reads = generate(12)
    assert third_reads == 0, "from the third on, a generation with the same schedule reads nothing at once"
    (graph,) = backend.stats().graphs
    assert graph.cheap_calls > 0 and graph.timestep_misses == 0
    for got in (first, second, third):
        torch.testing.assert_close(got, expected[0], rtol=0, atol=0)

    # A shorter generation departs from the prediction at its second step: caught a call later, in full from there
    # (still within the warm-up, so the whole generation is full compute).
    cheap_before = graph.cheap_calls
    departed, _ = generate(8)
    assert graph.timestep_misses == 1 and graph.cheap_calls == cheap_before
    torch.testing.assert_close(departed, expected[2], rtol=0, atol=0)
    # The next ones are read again (the departed one was partly predicted), then predicted from the first read.
    shorter = [generate(8) for _ in range(3)]
    assert [reads for _, reads in shorter] == [2 * 8, 1, 0] and graph.timestep_misses == 1
    for got, _ in shorter:
        torch.testing.assert_close(got, expected[1], rtol=0, atol=0)


def test_every_variant_takes_the_weights_as_static_inputs(
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA graphs copy every input not marked static into the graph's memory on each replay: the variants must
    keep the weights static, as plain compilation does, or each replay copies the whole model."""
    static_counts: list[int] = []
    read_metadata = aot_autograd._try_get_metadata_from_dynamo

    def recorded(*args: Any) -> Any:
        sources, static_indices = read_metadata(*args)
        static_counts.append(len(static_indices))
        return sources, static_indices

    monkeypatch.setattr(aot_autograd, "_try_get_metadata_from_dynamo", recorded)
    model = setup[0]
    torch.compile(model, backend="aot_eager", fullgraph=True)(setup[1], torch.full((1,), 1000.0), setup[2])
    (weights,) = static_counts
    assert weights == len(list(model.parameters())) + len(list(model.buffers()))
    static_counts.clear()
    torch._dynamo.reset()
    generations(setup, CONFIGS["residual, refresh, measured split"], steps=(12,))
    assert len(static_counts) == 3, "measuring, full and cheap variants"
    assert static_counts == [weights] * 3
