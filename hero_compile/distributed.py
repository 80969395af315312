"""Agreement between the ranks of a process group, for models run under context parallelism.

Under context parallelism (diffusers' Ulysses or Ring attention) every rank runs the same compiled graph on its
shard of the tokens, and the graph's collectives pair each rank with its peers. HERO keeps one invariant: every
runtime decision (the split, and which variant a call runs) is the same on every rank at the same call, so the
collectives a cheap step skips with the deep blocks are skipped by all ranks at once. Decisions read the step
(from the timestep, which every rank is given whole) and the configuration; the device values they read (the
measured variability, whether the caches are finite) are reduced across the default process group here first.

``torch.distributed`` is imported on first use: a single-process run never touches it.
"""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    """Whether this process is one of several ranks of a process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every rank (a copy; ``values`` itself when there is a single process)."""
    if not is_distributed():
        return values
    import torch.distributed as dist

    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def on_every_rank(flags: torch.Tensor) -> torch.Tensor:
    """Boolean ``flags`` that hold on every rank (themselves when there is a single process)."""
    if not is_distributed():
        return flags
    import torch.distributed as dist

    agreed = flags.to(torch.int32)  # gloo reduces no booleans
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return agreed.bool()
