"""The flow-matching Euler loop behind every sampler of the project (tests, benchmarks, analysis, world model).

Samplers differ only in how they call their model, classifier-free guidance included: they pass that as the
``velocity`` closure and share the schedule and the update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(x, timestep)``: the model's velocity at the sample ``x``."""


def euler_flow_matching(
    velocity: Velocity,
    noise: torch.Tensor,
    steps: int,
    timestep_scale: float = 1000.0,
    timestep_like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate a rectified flow from t=1 (``noise``) to t=0 in ``steps`` Euler steps, t uniform in between.

    The model sees ``t * timestep_scale`` as a ``(batch,)`` tensor of the default dtype on ``noise``'s device,
    or, given ``timestep_like``, as a tensor of its shape, dtype and device.
    """
    x = noise
    times = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        # Scaled as a Python float, then rounded once to the timestep's dtype.
        t = float(times[i]) * timestep_scale
        if timestep_like is None:
            timestep = torch.full((x.shape[0],), t, device=x.device)
        else:
            timestep = torch.full_like(timestep_like, t)
        x = x + float(times[i + 1] - times[i]) * velocity(x, timestep)
    return x
