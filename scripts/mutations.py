"""Deliberate breakages of hero's passes and runtime, for ``scripts/mutation_check.py``.

Loaded as a pytest plugin (``-p mutations``): the breakage named by ``HERO_MUTATION`` is applied when pytest
imports this module, before any test compiles a model. Each breakage is a small monkeypatch; none is in the library.
Tests marked ``quality_bar`` that do not name the breakage are deselected (``scripts/calibrate_bars.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from hero_compile import runtime
from hero_compile.passes import refresh


def coefficient_sign_flipped() -> None:
    """The second Lagrange weight of the extrapolation has the wrong sign."""
    original = runtime.extrapolation_coefficients

    def flipped(*args: Any, **kwargs: Any) -> list[float]:
        weights = original(*args, **kwargs)
        return [weights[0], -weights[1], *weights[2:]] if len(weights) > 1 else weights

    runtime.extrapolation_coefficients = flipped


def extrapolation_off() -> None:
    """Cheap steps copy the last full step's cached features: extrapolation silently of order 0."""
    original = runtime.extrapolation_coefficients

    def latest_only(*args: Any, **kwargs: Any) -> list[float]:
        weights = original(*args, **kwargs)
        return [1.0] + [0.0] * (len(weights) - 1)

    runtime.extrapolation_coefficients = latest_only


def deep_blocks_dropped() -> None:
    """Cheap steps predict nothing for the deep segment: every Lagrange weight is zero. With residual caching the
    deep blocks are simply removed; with output caching their features are zeros."""
    original = runtime.extrapolation_coefficients
    runtime.extrapolation_coefficients = lambda *args, **kwargs: [0.0] * len(original(*args, **kwargs))


def refresh_scatter_dropped() -> None:
    """A refreshed block's subset is computed but never written into its cached output."""
    refresh._BlockRewrite._scatter = lambda self, cache, value: cache  # type: ignore[method-assign]


def cfg_slots_swapped() -> None:
    """A cheap call of a classifier-free-guidance step reads the caches the other call's full steps wrote."""
    original = runtime.HeroRuntime._run_cheap

    def swapped(self: runtime.HeroRuntime, inputs: Any, time: float, slot: runtime.CallSlot, *rest: Any) -> Any:
        state = next(iter(self._states.values()))
        other = state.slots.get(1 - state.slot) if state.slot < 2 else None
        if other is not None and other.input_shapes == slot.input_shapes:
            slot = other
        return original(self, inputs, time, slot, *rest)

    runtime.HeroRuntime._run_cheap = swapped  # type: ignore[method-assign]


def refresh_cache_not_updated() -> None:
    """Cheap steps do not write their refreshed tokens back: the refresh caches stay those of the last full step."""
    original = runtime.HeroRuntime._run_cheap

    def stale(self: runtime.HeroRuntime, inputs: Any, time: float, slot: runtime.CallSlot, *rest: Any) -> Any:
        caches, finite = slot.refresh_caches, slot.refresh_caches_finite
        outputs = original(self, inputs, time, slot, *rest)
        slot.refresh_caches, slot.refresh_caches_finite = caches, finite
        return outputs

    runtime.HeroRuntime._run_cheap = stale  # type: ignore[method-assign]


def history_not_updated() -> None:
    """Full steps after the first do not enter the extrapolation history."""
    original = runtime.HeroRuntime._run_full

    def frozen(self: runtime.HeroRuntime, inputs: Any, time: float, slot: Any, *rest: Any) -> Any:
        history = list(slot.history) if slot is not None else None
        outputs = original(self, inputs, time, slot, *rest)
        if slot is not None and history:
            slot.history.clear()
            slot.history.extend(history)
        return outputs

    runtime.HeroRuntime._run_full = frozen  # type: ignore[method-assign]


def state_shared_by_all_weights() -> None:
    """Every model that runs a graph shares one generation state (two experts share their caches)."""
    runtime.HeroRuntime._state_for = lambda self, inputs: self._states.setdefault((), runtime.GenerationState())


MUTATIONS: dict[str, Callable[[], None]] = {
    f.__name__: f
    for f in (coefficient_sign_flipped, extrapolation_off, deep_blocks_dropped, refresh_scatter_dropped,
              cfg_slots_swapped, refresh_cache_not_updated, history_not_updated, state_shared_by_all_weights)
}

if os.environ.get("HERO_MUTATION"):
    MUTATIONS[os.environ["HERO_MUTATION"]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the quality bars that claim to catch the applied breakage (other tests are left alone)."""
    breakage = os.environ.get("HERO_MUTATION")
    if not breakage:
        return
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("quality_bar")
        (dropped if marker is not None and breakage not in marker.args else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
