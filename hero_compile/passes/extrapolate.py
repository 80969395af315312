"""Deep-block extrapolation: on a cheap step the deep segment is not run; its streams are predicted.

The deep segment is blocks ``split..end`` and the stack's tail (the stacks that run after it, and the glue
before them) as far as it depends on those blocks. Each value the rest of the graph reads from it is a *stream*
(hidden states; text states in dual-stream models). Its cached feature is the segment's residual (output
minus the segment's input of the same stream) or its output. On a cheap step the segment is removed and
every stream is predicted as ``sum_i coefficients[i] * history_i`` (plus the current input for residuals):
the coefficients are a tensor input computed on the host, so one graph serves every step and order. The history
is kept in the model's dtype; a half-precision stream's prediction is accumulated in float32 and cast back once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.config import CacheTarget
from hero_compile.passes.discover_blocks import Block, BlockStack
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import (
    RUNTIME_ASSERTS,
    append_placeholders,
    checked_tensors,
    copy_graph,
    flat_args,
    is_collective,
    new_graph_module,
    nodes_by_name,
    view_chain,
    written_value,
)


@dataclass(frozen=True)
class DeepStream:
    """One value read out of the deep segment and how it is cached."""

    output: str
    """The node of the segment the rest of the graph reads."""
    base: str | None
    """The segment's input of the same stream when the residual is cached, else ``None`` (output cached)."""


@dataclass(frozen=True)
class DeepSegment:
    """What the cheap variant skips, and the history it needs instead."""

    split: int
    blocks: tuple[Block, ...]
    tail: frozenset[str]
    """The nodes of the stack's tail that depend on the deep blocks (skipped with them)."""
    streams: tuple[DeepStream, ...]
    history_length: int

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(name for block in self.blocks for name in block.nodes) | self.tail


def plan_deep_segment(
    gm: fx.GraphModule, stack: BlockStack, split: int, cache_target: CacheTarget, history_length: int
) -> DeepSegment:
    """Which values leave blocks ``split..end`` and what to cache for each."""
    if not 0 <= split < len(stack.blocks):
        raise ValueError(f"split {split} leaves no deep block in a stack of {len(stack.blocks)}")
    nodes = nodes_by_name(gm.graph)
    blocks = stack.blocks[split:]
    block_nodes = {name for block in blocks for name in block.nodes}
    tail = _depending_on(block_nodes, stack.tail, nodes)
    inside = block_nodes | tail
    for name in inside:
        node = nodes[name]
        if _has_outside_effect(node, inside):
            raise RewriteUnsupported(f"deep-block node {name!r} ({node.target}) has side effects; it cannot be skipped")

    position_in_block = {name: i for block in blocks for i, name in enumerate(block.nodes)}
    bases = stack.stream_inputs(blocks[0], nodes)
    streams = []
    for node in nodes.values():
        if node.name not in inside or all(user.name in inside for user in node.users):
            continue
        base = None
        if cache_target == "residual":
            position = position_in_block.get(node.name)
            base = (_residual_base(stack, blocks[0], position, nodes) if position is not None
                    else _same_shaped(node, bases))
        streams.append(DeepStream(output=node.name, base=base))
    counters["hero"]["deep_streams_planned"] += len(streams)
    return DeepSegment(split, blocks, frozenset(tail), tuple(streams), history_length)


def _depending_on(sources: set[str], candidates: tuple[str, ...], nodes: dict[str, fx.Node]) -> set[str]:
    """The ``candidates`` (in graph order) that read, directly or through other candidates, a ``sources`` node."""
    reached = set(sources)
    for name in candidates:
        if any(arg.name in reached for arg in flat_args(nodes[name])):
            reached.add(name)
    return reached - sources


def _has_outside_effect(node: fx.Node, inside: set[str]) -> bool:
    """Whether skipping ``node`` changes anything outside the segment. Writes into values the segment created
    (rotary embeddings applied in place to its own queries) are invisible outside it, and so are Dynamo's runtime
    checks of sizes the segment computes (the length ``nonzero()`` packs a mask to).

    Collectives (context parallelism's all-to-alls and all-gathers) are skipped with the segment: every rank
    runs the cheap variant at the same call, because the runtime decides from rank-invariant values only (the
    step, the agreed split), so no rank waits for a peer that skipped its half."""
    if is_collective(node):
        return False
    target = written_value(node)
    if target is not None:
        return any(alias.name not in inside for alias in view_chain(target))
    if node.target in RUNTIME_ASSERTS:
        return not checked_tensors(node) <= inside
    return node.is_impure()


def _residual_base(stack: BlockStack, first_deep: Block, position: int, nodes: dict[str, fx.Node]) -> str | None:
    """The segment's input of the stream that the value at ``position`` of a block carries, if shaped alike.

    Blocks share one op sequence, so the value at ``position`` feeds the same input slot in every block; the
    first deep block's input at that slot is the stream's value before the segment.
    """
    slot = stack.slot_fed_by(position, nodes)
    if slot is None:
        return None
    base = stack.input_at(first_deep, slot, nodes)
    return base.name if _shaped_alike(nodes[first_deep.nodes[position]], base) else None


def _same_shaped(node: fx.Node, bases: list[fx.Node]) -> str | None:
    """The one segment input shaped like ``node``'s value (a tail stream's residual base), if exactly one is."""
    matches = [b.name for b in bases if _shaped_alike(node, b)]
    return matches[0] if len(matches) == 1 else None


def _shaped_alike(a: fx.Node, b: fx.Node) -> bool:
    """Whether both nodes' values are tensors of one shape and dtype (a residual of one over the other exists)."""
    x, y = a.meta.get("example_value"), b.meta.get("example_value")
    return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype


def extrapolate_deep_segment(gm: fx.GraphModule, segment: DeepSegment) -> fx.GraphModule:
    """The ``cheap`` variant: the deep segment's streams are predicted from the history; the segment is left
    dead (so later passes still find every node) for :func:`~hero_compile.passes.graph_surgery.without_dead_code`.

    New inputs, after the original ones: ``coefficients`` (shape ``(history_length,)``) and, stream by stream,
    ``history_length`` cached features, most recent first.
    """
    graph, nodes = copy_graph(gm.graph)
    length = segment.history_length
    names = [f"hero_history_{s}_{i}" for s in range(len(segment.streams)) for i in range(length)]
    coefficients, *flat_history = append_placeholders(graph, ["hero_coefficients", *names])
    history = [flat_history[s * length : (s + 1) * length] for s in range(len(segment.streams))]

    inside = segment.nodes
    with graph.inserting_before(nodes[segment.blocks[0].nodes[0]]):
        for stream, features in zip(segment.streams, history):
            output = nodes[stream.output]
            base = None if stream.base is None else nodes[stream.base]
            prediction = _prediction(graph, coefficients, features, base, _dtype(output))
            output.replace_all_uses_with(prediction, delete_user_cb=lambda user: user.name not in inside)
    counters["hero"]["deep_blocks_extrapolated"] += len(segment.blocks)
    counters["hero"]["tail_nodes_skipped"] += len(segment.tail)
    return new_graph_module(gm, graph)


def _dtype(node: fx.Node) -> torch.dtype | None:
    value = node.meta.get("example_value")
    return value.dtype if isinstance(value, torch.Tensor) else None


def _prediction(graph: fx.Graph, coefficients: fx.Node, features: list[fx.Node], base: fx.Node | None,
                dtype: torch.dtype | None) -> fx.Node:
    """``base + sum_i coefficients[i] * features[i]`` (no ``base`` when the output is cached) in the stream's
    ``dtype``, accumulated in float32 when that dtype is narrower: the weighted differences of nearly equal
    features (weights such as 2, -1) would otherwise round in half precision. Float32 streams get no casts."""
    wide = torch.promote_types(dtype, torch.float32) if dtype is not None and dtype.is_floating_point else dtype
    if wide == dtype:
        return _weighted_sum(graph, coefficients, features, base)

    counters["hero"]["deep_streams_accumulated_in_float32"] += 1

    def upcast(value: fx.Node) -> fx.Node:
        return graph.call_method("to", (value, wide))

    total = _weighted_sum(graph, coefficients, [upcast(f) for f in features], None if base is None else upcast(base))
    return graph.call_method("to", (total, dtype))


def _weighted_sum(graph: fx.Graph, coefficients: fx.Node, features: list[fx.Node], base: fx.Node | None
                  ) -> fx.Node:
    total: fx.Node | None = None
    for i, feature in enumerate(features):
        term = graph.call_function(operator.mul, (graph.call_function(operator.getitem, (coefficients, i)), feature))
        total = term if total is None else graph.call_function(operator.add, (total, term))
    assert total is not None
    return total if base is None else graph.call_function(operator.add, (base, total))
