"""How hero is measured: PSNR against a reference, FLOPs of the aten ops that run, alternated wall time.

Torch only: the analysis (``hero_compile.analyze``), the benchmark harness, the examples and the tests share it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def psnr_over_reference_range(estimate: torch.Tensor, reference: torch.Tensor) -> float:
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


def alternated_timings(
    runs: Mapping[str, Callable[[], Any]],
    repeats: int,
    on_run: Callable[[], None] | None = None,
    before_round: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Wall time of each callable in each of ``repeats`` rounds, every round calling each callable once, in
    order, so that drift of the machine hits all alike. Untimed: ``on_run`` (a progress bar) after each call,
    ``before_round`` (to reset state the callables share) before each round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        if before_round is not None:
            before_round()
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if on_run is not None:
                on_run()
    return times


def alternated_medians(runs: Mapping[str, Callable[[], Any]], repeats: int, on_run: Callable[[], None] | None = None
                       ) -> dict[str, float]:
    """Median wall time of each callable over ``repeats`` alternated rounds (:func:`alternated_timings`)."""
    return {name: statistics.median(values) for name, values in alternated_timings(runs, repeats, on_run).items()}
