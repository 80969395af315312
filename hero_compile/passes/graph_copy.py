"""Copying a Dynamo graph so that each variant is built from the original, never from another variant."""

from __future__ import annotations

import torch.fx as fx

from hero_compile.passes.discover_blocks import nodes_by_name


def copy_graph(graph: fx.Graph) -> tuple[fx.Graph, dict[str, fx.Node]]:
    """A copy of ``graph`` that keeps the node names (passes refer to nodes by name) and its nodes by name."""
    copy = fx.Graph()
    result = copy.graph_copy(graph, {})
    copy.output(result)
    return copy, nodes_by_name(copy)


def new_graph_module(original: fx.GraphModule, graph: fx.Graph) -> fx.GraphModule:
    """``graph`` as a module sharing ``original``'s attributes and metadata."""
    graph.lint()
    module = fx.GraphModule(original, graph)
    module.meta.update(original.meta)
    return module
