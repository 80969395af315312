"""Quality and cost measurements shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of ``estimate`` in dB, the peak being the reference's value range."""
    mse = torch.mean((estimate.double() - reference.double()) ** 2).item()
    peak = (reference.max() - reference.min()).double().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(peak**2 / mse)).item()


class FlopCounter(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s per-op FLOP formulas over the aten ops that run.

    Unlike ``FlopCounterMode`` it declares itself transparent to compilation: Dynamo runs frames eagerly
    while any other dispatch mode is active, which would count full compute for a compiled model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the aten ops ``fn`` dispatches. Compile with ``lowering="eager"`` so that every op is seen."""
    with FlopCounter() as counter:
        fn()
    return counter.total


def alternated_medians(runs: Mapping[str, Callable[[], Any]], repeats: int, on_run: Callable[[], None] | None = None
                       ) -> dict[str, float]:
    """Median wall time of each callable, the callables alternated so that drift of the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if on_run is not None:
                on_run()
    return {name: statistics.median(values) for name, values in times.items()}
