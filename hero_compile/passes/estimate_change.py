"""The adaptive schedule's measurement: how far the block stack's input moved since the last full step.

The full variant returns the stack's input streams (``cache_outputs``); the cheap variant takes them back as
inputs and returns, last, ``sum_s sum|x_s - full_s| / sum_s sum|full_s|`` as a 0-d float32 tensor
(:func:`hero_compile.adaptive.relative_l1_distance`). The prelude computes the stack's input on every call, cheap
ones included, so the measurement costs a reduction, not a block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.adaptive import relative_l1_distance
from hero_compile.passes.discover_blocks import BlockStack
from hero_compile.passes.graph_surgery import (
    append_outputs,
    append_placeholders,
    copy_graph,
    new_graph_module,
    nodes_by_name,
)


def stack_input_streams(gm: fx.GraphModule, stack: BlockStack) -> list[str]:
    """The values the first block reads through its stream slots (hidden states; text states in dual-stream
    models): what the change is measured on."""
    return [node.name for node in stack.stream_inputs(stack.blocks[0], nodes_by_name(gm.graph))]


def add_change_estimate(gm: fx.GraphModule, streams: Sequence[str]) -> fx.GraphModule:
    """``gm`` with one new input per stream (its value at the last full step) and, after its outputs, the
    relative L1 distance of the streams' current values from those."""
    graph, nodes = copy_graph(gm.graph)
    references = append_placeholders(graph, [f"hero_full_stack_input_{i}" for i in range(len(streams))])
    with graph.inserting_before(graph.output_node()):
        # The runtime measures full steps with the same function, eagerly: one definition of the distance.
        distance = graph.call_function(relative_l1_distance, ([nodes[name] for name in streams], references))
    append_outputs(graph, [distance])
    counters["hero"]["change_estimates"] += 1
    return new_graph_module(gm, graph)
