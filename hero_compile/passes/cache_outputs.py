"""The ``full`` variant: the original computation, also returning what the cheap steps' caches need."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.passes.extrapolate import DeepSegment, DeepStream
from hero_compile.passes.graph_surgery import append_outputs, copy_graph, new_graph_module


def add_cache_outputs(
    gm: fx.GraphModule, segment: DeepSegment | None, refresh_cached: Sequence[str], stack_inputs: Sequence[str] = ()
) -> fx.GraphModule:
    """Outputs after the original ones: each deep stream's feature, the values refreshed blocks cache, then the
    ``stack_inputs`` the adaptive schedule measures the change of."""
    graph, nodes = copy_graph(gm.graph)
    with graph.inserting_before(graph.output_node()):
        features = [_feature(graph, nodes, stream) for stream in (segment.streams if segment else ())]
    append_outputs(graph, [*features, *(nodes[name] for name in [*refresh_cached, *stack_inputs])])
    counters["hero"]["cache_outputs"] += len(features) + len(refresh_cached) + len(stack_inputs)
    return new_graph_module(gm, graph)


def _feature(graph: fx.Graph, nodes: dict[str, fx.Node], stream: DeepStream) -> fx.Node:
    """The stream's residual over the deep segment, or its output when no residual base was found."""
    output = nodes[stream.output]
    if stream.base is None:
        return output
    return graph.call_function(operator.sub, (output, nodes[stream.base]))
