"""Shared fixtures: single-threaded tiny models, a fresh Dynamo per test, graph capture and recompile checks.

Tests that share a compiled model across a module mark it ``@pytest.mark.shared_compile``: the autouse reset
would otherwise throw the compiled code away before every test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.fx as fx
from hypothesis import HealthCheck, settings
from torch._dynamo import convert_frame
from torch._dynamo.utils import counters, guard_failures

from hero_compile import HeroBackend

sys.path.insert(0, os.path.dirname(__file__))

# The models are tiny: one intra-op thread is faster than two, and much faster when another process is busy.
torch.set_num_threads(1)

settings.register_profile(
    "hero",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hero"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared_compile: the module shares compiled models; no Dynamo reset per test")
    config.addinivalue_line("markers", "quality_bar(*breakages): a PSNR bar that fails under each named breakage "
                            "of scripts/mutations.py (checked by scripts/calibrate_bars.py)")


# The breakages (scripts/mutations.py) a bar on a generation with extrapolated deep blocks must catch.
BAD_EXTRAPOLATION = ("extrapolation_off", "history_not_updated", "deep_blocks_dropped")


def assert_bar_separates(measured: float, bar: float, broken: float) -> None:
    """``measured`` clears ``bar`` and ``broken`` (the same measure of a deliberately broken method, run in the
    test) does not: a bar that a broken method also clears could not fail."""
    assert broken < bar, f"the bar of {bar:.1f} dB cannot fail: a broken method reaches {broken:.1f} dB"
    assert measured >= bar, f"{measured:.1f} dB is below the bar of {bar:.1f} dB (a broken method: {broken:.1f})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``CI=true`` every test must run: a skip (an optional dependency such as diffusers missing from the
    environment) fails the run instead of passing it with whole modules unseen."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") == "true" and skipped:
        reporter.write_line(f"CI=true: {len(skipped)} skipped (a missing dependency?): "
                            + "; ".join(str(report.longrepr) for report in skipped[:3]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def fresh_dynamo() -> None:
    """Forget every compiled frame and every counter, as in a new process."""
    torch._dynamo.reset()
    counters.clear()
    guard_failures.clear()


@pytest.fixture(autouse=True)
def _fresh_dynamo(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("shared_compile") is None:
        fresh_dynamo()
    yield


def recompile_report() -> dict[str, Any]:
    """What torch 2.13 exposes about (re)compilation since the last :func:`fresh_dynamo`.

    There is no ``counters["recompiles"]`` in 2.13: a recompile shows as a frame compiled more than once
    (``FRAME_COMPILE_COUNTER``), as a guard-failure reason (``guard_failures``) and as an extra unique graph.
    """
    return {
        "unique_graphs": counters["stats"]["unique_graphs"],
        "frame_compiles": dict(convert_frame.FRAME_COMPILE_COUNTER),
        "guard_failures": {str(k): list(v) for k, v in guard_failures.items()},
    }


def assert_no_recompiles(report: dict[str, Any], graphs: int = 1) -> None:
    assert report["unique_graphs"] == graphs, report
    assert report["frame_compiles"] and all(n == 1 for n in report["frame_compiles"].values()), report
    assert not report["guard_failures"], report


def capture_graph(model: torch.nn.Module, *args: Any) -> fx.GraphModule:
    """The single Dynamo graph of ``model(*args)``, captured with a recording backend."""
    graphs: list[fx.GraphModule] = []

    def record(gm: fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        graphs.append(gm)
        return gm.forward

    fresh_dynamo()
    with torch.no_grad():
        torch.compile(model, backend=record, fullgraph=True)(*args)
    assert len(graphs) == 1
    return graphs[0]


@pytest.fixture
def capture() -> Callable[..., fx.GraphModule]:
    return capture_graph


@dataclass
class Call:
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor
    full: bool
    eager: torch.Tensor | None = None


@dataclass
class Recorder:
    """Wraps a compiled model: records each call's inputs, output, whether it ran in full, and the eager output."""

    compiled: Callable[..., torch.Tensor]
    backend: HeroBackend
    eager: torch.nn.Module | None = None
    calls: list[Call] = field(default_factory=list)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        before = self.backend.stats().full_calls
        output = self.compiled(*inputs)
        full = self.backend.stats().full_calls > before
        eager = self.eager(*inputs) if self.eager is not None else None
        self.calls.append(Call(tuple(x.clone() for x in inputs), output.clone(), full, eager))
        return output

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls
