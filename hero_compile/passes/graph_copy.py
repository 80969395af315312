"""Graph surgery shared by the passes: copying a graph, adding inputs and outputs."""

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


def append_placeholders(graph: fx.Graph, names: list[str]) -> list[fx.Node]:
    """New inputs after the existing ones, in order."""
    anchor = list(graph.find_nodes(op="placeholder"))[-1]
    added = []
    for name in names:
        with graph.inserting_after(anchor):
            anchor = graph.placeholder(name)
        added.append(anchor)
    return added


def append_outputs(graph: fx.Graph, values: list[fx.Node]) -> None:
    """Return ``values`` after the graph's existing outputs."""
    output = graph.output_node()
    existing = output.args[0]
    assert isinstance(existing, (tuple, list)), "Dynamo graphs return a tuple"
    output.args = ((*existing, *values),)


def live_nodes(graph: fx.Graph) -> set[str]:
    """Names of the nodes the outputs depend on, or that have side effects."""
    live: set[str] = set()
    for node in reversed(graph.nodes):
        if node.op == "output" or node.is_impure() or any(user.name in live for user in node.users):
            live.add(node.name)
    return live


def without_dead_code(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` without the nodes no output depends on (what the rewrites left behind)."""
    graph, _ = copy_graph(gm.graph)
    graph.eliminate_dead_code()
    return new_graph_module(gm, graph)
