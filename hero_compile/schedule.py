"""Host-side decisions of a generation: which steps are full, and the extrapolation coefficients."""

from __future__ import annotations

from collections.abc import Sequence

from hero_compile.config import HeroConfig


def is_forced_full_step(step: int, config: HeroConfig, total_steps: int | None) -> bool:
    """Whether ``step`` is full under every schedule: a warm-up step or one of the last ``final_full_steps``."""
    return step < config.warmup_steps or (total_steps is not None and step >= total_steps - config.final_full_steps)


def is_full_step(step: int, config: HeroConfig, total_steps: int | None) -> bool:
    """The fixed schedule: warm-up steps, one step in ``interval`` after them, and the last ``final_full_steps``
    are full."""
    return is_forced_full_step(step, config, total_steps) or (step - config.warmup_steps + 1) % config.interval == 0


def extrapolation_coefficients(timestep: float, history: Sequence[float], order: int, length: int,
                               damping: float = 1.0) -> list[float]:
    """Weights predicting a feature at ``timestep`` from features at ``history`` (most recent first): the last
    feature plus ``damping`` times the Lagrange extrapolation's change from it.

    Uses the ``order + 1`` most recent points (fewer while the history is short); the list is padded with
    zeros to ``length`` so that the compiled graph always takes the same number of history inputs.
    """
    points = list(history[: order + 1])
    weights = []
    for i, t_i in enumerate(points):
        weight = 1.0
        for j, t_j in enumerate(points):
            if j != i:
                weight *= (timestep - t_j) / (t_i - t_j)
        weights.append(damping * weight + (1.0 - damping) * (i == 0))
    return weights + [0.0] * (length - len(weights))
