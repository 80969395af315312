"""Host-side schedule: Lagrange extrapolation weights, which steps are full, the split, generation tracking."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hero_compile import HeroConfig
from hero_compile.runtime import GenerationState
from hero_compile.schedule import extrapolation_coefficients, is_full_step

timesteps = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_infinity=False)
coefficient = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False)


def distinct(points: list[float], gap: float = 1.0) -> bool:
    return all(abs(a - b) >= gap for i, a in enumerate(points) for b in points[i + 1 :])


def predict(weights: list[float], values: list[float]) -> float:
    return sum(w * v for w, v in zip(weights, values))


@given(t0=timesteps, t1=timesteps, target=timesteps, a=coefficient, b=coefficient)
def test_order_1_reproduces_linear_features(t0: float, t1: float, target: float, a: float, b: float) -> None:
    assume(distinct([t0, t1]))
    f = lambda t: a * t + b  # noqa: E731
    weights = extrapolation_coefficients(target, [t0, t1], order=1, length=2)
    assert len(weights) == 2
    scale = abs(a) * 1000 + abs(b) + 1
    assert math.isclose(predict(weights, [f(t0), f(t1)]), f(target), rel_tol=1e-6, abs_tol=1e-6 * scale)


@given(
    points=st.lists(timesteps, min_size=3, max_size=3), target=timesteps, a=coefficient, b=coefficient, c=coefficient
)
def test_order_2_reproduces_quadratic_features(
    points: list[float], target: float, a: float, b: float, c: float
) -> None:
    assume(distinct(points, gap=5.0))
    f = lambda t: a * (t / 1000) ** 2 + b * (t / 1000) + c  # noqa: E731
    weights = extrapolation_coefficients(target, points, order=2, length=3)
    scale = abs(a) + abs(b) + abs(c) + 1
    assert math.isclose(predict(weights, [f(t) for t in points]), f(target), rel_tol=1e-6, abs_tol=1e-6 * scale)


@given(
    order=st.integers(0, 2),
    history=st.lists(timesteps, min_size=1, max_size=5),
    target=timesteps,
    extra=st.integers(0, 3),
)
def test_weights_sum_to_one_and_are_padded(order: int, history: list[float], target: float, extra: int) -> None:
    assume(distinct(history[: order + 1]))
    length = order + 1 + extra
    weights = extrapolation_coefficients(target, history, order, length)
    assert len(weights) == length
    used = min(len(history), order + 1)
    # only the most recent order + 1 points have weights; the padding is exact zeros
    assert weights[used:] == [0.0] * (length - used)
    assert math.isclose(sum(weights), 1.0, rel_tol=0, abs_tol=1e-9 * max(1.0, sum(abs(w) for w in weights)))


@given(order=st.integers(0, 2), history=st.lists(timesteps, min_size=3, max_size=3), pick=st.integers(0, 2))
def test_target_on_a_history_point_picks_that_point(order: int, history: list[float], pick: int) -> None:
    assume(distinct(history) and pick <= order)
    weights = extrapolation_coefficients(history[pick], history, order, 3)
    expected = [0.0] * 3
    expected[pick] = 1.0
    assert weights == pytest.approx(expected, abs=1e-9)


@given(
    order=st.integers(0, 2),
    history=st.lists(timesteps, min_size=3, max_size=3),
    target=timesteps,
    damping=st.floats(0.0, 1.0),
)
def test_damping_moves_the_weights_from_the_last_feature_towards_the_polynomial(
    order: int, history: list[float], target: float, damping: float
) -> None:
    """A damped prediction is the last feature plus ``damping`` times the polynomial's change from it: 0 is order
    0, 1 the plain extrapolation; the weights still sum to one."""
    assume(distinct(history))
    plain = extrapolation_coefficients(target, history, order, 3)
    damped = extrapolation_coefficients(target, history, order, 3, damping)
    last = [1.0, 0.0, 0.0]
    expected = [damping * p + (1 - damping) * e for p, e in zip(plain, last)]
    assert damped == pytest.approx(expected, rel=1e-9, abs=1e-9 * max(1.0, *map(abs, plain)))
    assert math.isclose(sum(damped), 1.0, rel_tol=0, abs_tol=1e-9 * max(1.0, sum(map(abs, damped))))
    assert extrapolation_coefficients(target, history, order, 3, 0.0) == last
    assert extrapolation_coefficients(target, history, order, 3, 1.0) == plain


def test_half_damping_halves_the_linear_step() -> None:
    # linear through (600, 700) at 500 is f(600) + (f(600) - f(700)); half of that step: 1.5 f(600) - 0.5 f(700)
    assert extrapolation_coefficients(500.0, [600.0, 700.0], 1, 2, 0.5) == pytest.approx([1.5, -0.5])


def test_order_0_and_short_history() -> None:
    assert extrapolation_coefficients(500.0, [600.0, 700.0], order=0, length=1) == [1.0]
    assert extrapolation_coefficients(500.0, [600.0], order=2, length=3) == [1.0, 0.0, 0.0]
    # linear through (600, 700) evaluated at 500: 2 * f(600) - f(700)
    assert extrapolation_coefficients(500.0, [600.0, 700.0], order=1, length=3) == pytest.approx([2.0, -1.0, 0.0])


# ---------------------------------------------------------------------------------------------------------------
# is_full_step
# ---------------------------------------------------------------------------------------------------------------


def test_full_step_pattern_example() -> None:
    config = HeroConfig(warmup_steps=2, interval=3, final_full_steps=1)
    assert [is_full_step(s, config, 10) for s in range(10)] == [1, 1, 0, 0, 1, 0, 0, 1, 0, 1]
    # without a known length the final step is not forced
    assert [is_full_step(s, config, None) for s in range(10)] == [1, 1, 0, 0, 1, 0, 0, 1, 0, 0]


@given(
    warmup=st.integers(0, 6),
    interval=st.integers(1, 6),
    final=st.integers(0, 4),
    total=st.one_of(st.none(), st.integers(1, 40)),
)
def test_full_step_semantics(warmup: int, interval: int, final: int, total: int | None) -> None:
    config = HeroConfig(warmup_steps=warmup, interval=interval, final_full_steps=final)
    steps = total if total is not None else 40
    full = [is_full_step(s, config, total) for s in range(steps)]
    # warm-up steps are full
    assert all(full[: min(warmup, steps)])
    # the last final_full_steps steps are full once the length is known
    if total is not None:
        assert all(full[max(0, total - final) :])
    end = steps if total is None else max(warmup, total - final)
    middle = full[warmup:end]
    if interval == 1:
        assert all(middle)
    else:
        # after warm-up: interval - 1 cheap steps, then one full step, repeating
        expected = [(i + 1) % interval == 0 for i in range(len(middle))]
        assert middle == expected
        # in any window of `interval` consecutive steps exactly one is full
        for i in range(len(middle) - interval + 1):
            assert sum(middle[i : i + interval]) == 1


def test_interval_1_disables_acceleration() -> None:
    config = HeroConfig(interval=1, warmup_steps=0, final_full_steps=0)
    assert all(is_full_step(s, config, total) for s in range(50) for total in (None, 50))


# ---------------------------------------------------------------------------------------------------------------
# GenerationState: steps, call slots and generations from the timestep sequence alone
# ---------------------------------------------------------------------------------------------------------------


def test_generation_state_tracks_steps_slots_and_generations() -> None:
    state = GenerationState()
    schedule = [(1000.0,), (750.0,), (500.0,), (250.0,)]
    placed = []
    for t in schedule:
        for _ in range(2):  # CFG: two calls per step
            placed.append((state.advance(t), state.step, state.slot))
    assert placed == [
        (True, 0, 0), (False, 0, 1), (False, 1, 0), (False, 1, 1),
        (False, 2, 0), (False, 2, 1), (False, 3, 0), (False, 3, 1),
    ]  # fmt: skip
    assert state.total_steps() is None, "the first generation's length is unknown"
    assert state.advance((1000.0,)) is True, "the timestep going up starts a new generation"
    assert (state.step, state.slot, state.slots) == (0, 0, {})
    assert state.total_steps() == 4
    state.advance((600.0,))
    assert state.total_steps() is None, "a different schedule has an unknown length"


def test_a_timestep_of_several_values_is_placed_as_a_whole() -> None:
    """Per-frame noise levels (diffusion forcing): a step is identified by every value, not the first."""
    state = GenerationState()
    assert state.advance((1000.0, 500.0)) is True
    assert state.advance((1000.0, 400.0)) is False and (state.step, state.slot) == (1, 0), "one frame moved on"
    assert state.advance((1000.0, 400.0)) is False and (state.step, state.slot) == (1, 1), "the CFG call"
    assert state.advance((900.0, 300.0)) is False and state.step == 2
    assert state.advance((900.0, 350.0)) is True, "a value rising starts a new generation"
    assert state.advance((1000.0,)) is True, "a larger largest value starts a new generation"
