"""Liveness in the rewritten graphs: what dead-code elimination may drop and what it must keep."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from hero_compile.passes.graph_surgery import RUNTIME_ASSERTS, copy_graph, new_graph_module, without_dead_code


class PackAndCount(nn.Module):
    """Two results: ``x`` doubled, and the sum of the rows ``mask`` selects (a ``nonzero()`` packing whose
    length Dynamo checks at run time); each call also counts itself in a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.add_(1)
        packed = x[torch.nonzero(mask).flatten()]
        return x * 2, packed.sum(0)


def _captured(capture: Callable[..., fx.GraphModule]) -> fx.GraphModule:
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        return capture(PackAndCount(), torch.randn(6, 4), torch.tensor([1, 0, 1, 1, 0, 1]))


def _keeping_only_the_first_output(gm: fx.GraphModule) -> fx.GraphModule:
    graph, _ = copy_graph(gm.graph)
    output = graph.output_node()
    output.args = ((output.args[0][0],),)
    return new_graph_module(gm, graph)


def _targets(gm: fx.GraphModule) -> list[object]:
    return [node.target for node in gm.graph.nodes]


def test_runtime_checks_live_exactly_as_long_as_the_values_they_check(capture: Callable[..., fx.GraphModule]) -> None:
    gm = _captured(capture)
    checks = sum(target in RUNTIME_ASSERTS for target in _targets(gm))
    assert checks > 0 and torch.nonzero in _targets(gm)
    assert sum(target in RUNTIME_ASSERTS for target in _targets(without_dead_code(gm))) == checks

    pruned = without_dead_code(_keeping_only_the_first_output(gm))
    assert not any(target in RUNTIME_ASSERTS for target in _targets(pruned))
    assert torch.nonzero not in _targets(pruned)


def test_writes_into_inputs_are_kept_when_no_output_reads_them(capture: Callable[..., fx.GraphModule]) -> None:
    pruned = without_dead_code(_keeping_only_the_first_output(_captured(capture)))
    assert "add_" in _targets(pruned)
