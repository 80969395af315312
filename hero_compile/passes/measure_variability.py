"""The ``measuring`` variant: the full computation, also measuring how far each block's output moved since the
previous denoising step (the layer-wise temporal variability the shallow/deep split is chosen by).

The measurement is a pair of sums per block, ``||F_l(t) - F_l(t-1)||^2`` and ``||F_l(t)||^2``, over every
floating-point value the block passes on. They are reductions of values the graph computes anyway, so Inductor
fuses them into the kernels that produce the block outputs; all blocks' sums leave the graph as one small
tensor, so the host reads nothing per block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.passes.discover_blocks import Block, BlockStack
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import (
    append_outputs,
    append_placeholders,
    copy_graph,
    new_graph_module,
    nodes_by_name,
)


def measured_outputs(block: Block, nodes: dict[str, fx.Node]) -> list[str]:
    """The block outputs the variability is measured on: the floating-point tensors the block passes on."""
    return [name for name in block.outputs if _is_float_tensor(nodes[name].meta.get("example_value"))]


def add_variability_outputs(gm: fx.GraphModule, stack: BlockStack) -> fx.GraphModule:
    """The measuring variant of ``gm``.

    Inputs after the original ones: every block's measured outputs at the previous step (block order, then
    :func:`measured_outputs` order). Outputs after the original ones: the same values at this step, then a
    ``(num_blocks, 2)`` float32 tensor whose row ``l`` is ``[||F_l(t) - F_l(t-1)||^2, ||F_l(t)||^2]``.
    """
    graph, nodes = copy_graph(gm.graph)
    measured = [measured_outputs(block, nodes) for block in stack.blocks]
    if not all(measured):
        empty = [block.path for block, names in zip(stack.blocks, measured) if not names]
        raise RewriteUnsupported(f"blocks {empty} pass on no floating-point tensor to measure variability on")
    current = [nodes[name] for names in measured for name in names]
    previous = iter(append_placeholders(graph, [f"previous_{node.name}" for node in current]))
    with graph.inserting_before(graph.output_node()):
        rows = []
        for names in measured:
            pairs = [(nodes[name], next(previous)) for name in names]
            change = _sum(graph, [_squared_norm(graph, graph.call_function(torch.sub, (now, before)))
                                  for now, before in pairs])
            size = _sum(graph, [_squared_norm(graph, now) for now, _ in pairs])
            rows.append(graph.call_function(torch.stack, ([change, size],)))
        table = graph.call_function(torch.stack, (rows,))
    append_outputs(graph, [*current, table])
    counters["hero"]["variability_outputs"] += len(rows)
    return new_graph_module(gm, graph)


def _squared_norm(graph: fx.Graph, value: fx.Node) -> fx.Node:
    # Functions, not tensor methods: AOTAutograd's cache bypasses a graph with methods on values a pass added.
    norm = graph.call_function(torch.linalg.vector_norm, (value,), {"dtype": torch.float32})
    return graph.call_function(torch.square, (norm,))


def _sum(graph: fx.Graph, values: list[fx.Node]) -> fx.Node:
    total = values[0]
    for value in values[1:]:
        total = graph.call_function(torch.add, (total, value))
    return total


def _is_float_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def measured_examples(gm: fx.GraphModule, stack: BlockStack) -> list[torch.Tensor]:
    """Dynamo's example values (fake tensors) of the measured outputs: example inputs for the previous step's."""
    nodes = nodes_by_name(gm.graph)
    return [nodes[name].meta["example_value"] for block in stack.blocks for name in measured_outputs(block, nodes)]


def zero_previous_outputs(gm: fx.GraphModule, stack: BlockStack) -> Callable[[Sequence[Any]], list[torch.Tensor]]:
    """For the first call of a generation, which has no previous step: zeros shaped like each measured output
    for the given inputs (sizes that Dynamo made symbolic are bound from the inputs' sizes)."""
    examples = measured_examples(gm, stack)
    placeholders = [node.meta.get("example_value") for node in gm.graph.find_nodes(op="placeholder")]

    def zeros(inputs: Sequence[Any]) -> list[torch.Tensor]:
        bindings = _symbol_bindings(placeholders, inputs)
        device = next(x.device for x in inputs if isinstance(x, torch.Tensor))
        # In the layout of the block output each stands for: Inductor asserts the strides of every input.
        return [torch.empty_strided([_concrete(d, bindings) for d in e.shape],
                                    [_concrete(d, bindings) for d in e.stride()], dtype=e.dtype, device=device).zero_()
                for e in examples]

    return zeros


def _symbol_bindings(examples: Sequence[Any], inputs: Sequence[Any]) -> dict[Any, int]:
    bindings: dict[Any, int] = {}
    for example, value in zip(examples, inputs):
        if isinstance(example, torch.SymInt):
            bindings[example.node.expr] = int(value)
        elif isinstance(example, torch.Tensor):
            for size, actual in zip(example.shape, value.shape):
                if isinstance(size, torch.SymInt):
                    bindings[size.node.expr] = int(actual)
    return bindings


def _concrete(size: int | torch.SymInt, bindings: dict[Any, int]) -> int:
    return size if isinstance(size, int) else int(size.node.expr.xreplace(bindings))
