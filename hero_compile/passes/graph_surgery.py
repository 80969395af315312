"""The FX utilities every pass shares: looking nodes up, copying a graph, adding inputs and outputs, liveness."""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
import torch.fx as fx


def flat_args(node: fx.Node) -> list[fx.Node]:
    """The node's inputs in a fixed order (positional, then keyword), nested containers flattened."""
    flat: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), flat.append)
    return flat


def nodes_by_name(graph: fx.Graph) -> dict[str, fx.Node]:
    return {node.name: node for node in graph.nodes}


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
    # With it, AOTAutograd takes the inputs Dynamo marked static (the weights) for static: CUDA graphs then read
    # them in place instead of copying every weight into the graph's memory on each replay.
    if hasattr(original, "_param_name_to_source"):
        module._param_name_to_source = original._param_name_to_source
    # AOTAutograd reads the Dynamo source of every input of a graph Dynamo captured (dynamic shapes): the
    # copied inputs keep theirs, the inputs a pass added have none.
    sources = {node.name: getattr(node, "_dynamo_source", None) for node in original.graph.find_nodes(op="placeholder")}
    for node in graph.find_nodes(op="placeholder"):
        node._dynamo_source = sources.get(node.name)
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


RUNTIME_ASSERTS = (torch.ops.aten._assert_scalar.default, torch.ops.aten.sym_constrain_range_for_size.default)
"""Dynamo's runtime checks of data-dependent sizes (the length ``nonzero()`` packs a mask to)."""

COLLECTIVES_NAMESPACE = "_c10d_functional"
"""The namespace of the functional collectives (``all_to_all_single``, ``all_gather_into_tensor``, ``wait_tensor``)
that context parallelism (diffusers' Ulysses and Ring attention) puts into the graph."""


def is_collective(node: fx.Node) -> bool:
    """Whether ``node`` issues or waits for a functional collective.

    fx calls these impure, but their only effect is their result, on every rank of the process group alike: the
    rewrites may drop them with the values they compute, provided every rank runs the same variant at the same
    call (the runtime's rank-invariant decisions, ``hero_compile.runtime``).
    """
    target = node.target
    packet = getattr(target, "overloadpacket", target)
    return node.op == "call_function" and getattr(packet, "_qualified_op_name", "").startswith(
        f"{COLLECTIVES_NAMESPACE}::")


def runs_collectives(graph: fx.Graph) -> bool:
    """Whether the graph communicates with other ranks (it runs under context parallelism)."""
    return any(is_collective(node) for node in graph.nodes)


def live_nodes(graph: fx.Graph) -> set[str]:
    """Names of the nodes the outputs depend on, side effects included.

    In-place writes into values the graph computes (``q[:, :, n:] = rotary(...)``), unlike writes into its
    inputs, are live only while the written value, or a tensor it is a view of, is live: fx's own dead-code
    elimination keeps every such write, and with it the whole computation of a block the rewrite no longer
    needs. Runtime asserts likewise live only while the tensors whose sizes they check do, and collectives
    while their results are read (see :func:`is_collective`).
    """
    writes: dict[str, list[fx.Node]] = defaultdict(list)
    roots: list[fx.Node] = [graph.output_node()]
    asserts: list[fx.Node] = []
    for node in graph.nodes:
        target = written_value(node)
        if target is not None and any(alias.op == "placeholder" for alias in view_chain(target)):
            roots.append(node)  # a write into an input (a buffer's counter) is seen by the caller
        elif target is not None:
            for alias in view_chain(target):
                writes[alias.name].append(node)
        elif node.target in RUNTIME_ASSERTS:
            asserts.append(node)
        elif node.op not in ("placeholder", "output") and node.is_impure() and not is_collective(node):
            roots.append(node)
    live: set[str] = set()
    _mark_live(roots, live, writes)
    # Checks only reach symbolic scalars and the tensors they check, which are live already.
    _mark_live([node for node in asserts if checked_tensors(node) <= live], live, writes)
    return live


def _mark_live(roots: list[fx.Node], live: set[str], writes: dict[str, list[fx.Node]]) -> None:
    """Add ``roots``, their inputs and the writes into them, transitively, to ``live``."""
    while roots:
        node = roots.pop()
        if node.name in live:
            continue
        live.add(node.name)
        roots.extend(flat_args(node))
        roots.extend(writes.get(node.name, ()))


def checked_tensors(assertion: fx.Node) -> set[str]:
    """The tensors whose sizes or values a runtime assert checks: its inputs, followed up through symbolic
    scalars (``sym_size_int(nonzero, 0) >= 0`` checks ``nonzero``)."""
    tensors: set[str] = set()
    pending = flat_args(assertion)
    while pending:
        node = pending.pop()
        if isinstance(node.meta.get("example_value", node.meta.get("val")), (torch.SymInt, torch.SymBool, int, bool)):
            pending.extend(flat_args(node))
        else:
            tensors.add(node.name)
    return tensors


def without_dead_code(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` without the nodes no output depends on (what the rewrites left behind)."""
    graph, _ = copy_graph(gm.graph)
    live = live_nodes(graph)
    for node in reversed(graph.nodes):
        if node.op not in ("placeholder", "output") and node.name not in live:
            graph.erase_node(node)
    return new_graph_module(gm, graph)


_VIEWS = {
    "view", "reshape", "transpose", "permute", "unflatten", "flatten", "squeeze", "unsqueeze", "expand",
    "narrow", "chunk", "split", "unbind", "t", operator.getitem, torch.reshape, torch.transpose, torch.permute,
    torch.flatten, torch.squeeze, torch.unsqueeze, torch.narrow, torch.chunk, torch.split, torch.unbind,
}


def written_value(node: fx.Node) -> fx.Node | None:
    """The graph value an in-place write modifies (``setitem``, ``x.add_(...)``), if ``node`` is one."""
    in_place_method = (
        node.op == "call_method" and isinstance(node.target, str)
        and node.target.endswith("_") and not node.target.endswith("__")
    )
    if not (in_place_method or node.target is operator.setitem):
        return None
    target = node.args[0]
    return target if isinstance(target, fx.Node) else None


def view_chain(node: fx.Node) -> list[fx.Node]:
    """``node`` and the values it may be a view of (a write into it changes them too)."""
    chain = [node]
    while chain[-1].target in _VIEWS and isinstance(chain[-1].args[0], fx.Node):
        chain.append(chain[-1].args[0])
    return chain
