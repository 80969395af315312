"""Deep-block extrapolation: on a cheap step the deep segment is not run; its streams are predicted.

The deep segment is blocks ``split..end``. Each value the rest of the graph reads from it is a *stream*
(hidden states; text states in dual-stream models). Its cached feature is the segment's residual (output
minus the segment's input of the same stream) or its output. On a cheap step the segment is removed and
every stream is predicted as ``sum_i coefficients[i] * history_i`` (plus the current input for residuals):
the coefficients are a tensor input computed on the host, so one graph serves every step and order.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.config import CacheTarget
from hero_compile.passes.discover_blocks import Block, BlockStack, nodes_by_name
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import (
    append_placeholders,
    copy_graph,
    new_graph_module,
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
    streams: tuple[DeepStream, ...]
    history_length: int

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(name for block in self.blocks for name in block.nodes)


def plan_deep_segment(
    gm: fx.GraphModule, stack: BlockStack, split: int, cache_target: CacheTarget, history_length: int
) -> DeepSegment:
    """Which values leave blocks ``split..end`` and what to cache for each."""
    if not 0 <= split < len(stack.blocks):
        raise ValueError(f"split {split} leaves no deep block in a stack of {len(stack.blocks)}")
    nodes = nodes_by_name(gm.graph)
    blocks = stack.blocks[split:]
    inside = {name for block in blocks for name in block.nodes}
    for name in inside:
        node = nodes[name]
        if _has_outside_effect(node, inside):
            raise RewriteUnsupported(f"deep-block node {name!r} ({node.target}) has side effects; it cannot be skipped")

    streams = []
    for block in blocks:
        for name in block.outputs:
            if all(user.name in inside for user in nodes[name].users):
                continue
            position = block.nodes.index(name)
            base = _residual_base(stack, blocks[0], position, nodes) if cache_target == "residual" else None
            streams.append(DeepStream(output=name, base=base))
    counters["hero"]["deep_streams_planned"] += len(streams)
    return DeepSegment(split, blocks, tuple(streams), history_length)


def _has_outside_effect(node: fx.Node, inside: set[str]) -> bool:
    """Whether skipping ``node`` changes anything outside the segment. Writes into values the segment created
    (rotary embeddings applied in place to its own queries) are invisible outside it."""
    target = written_value(node)
    if target is not None:
        return any(alias.name not in inside for alias in view_chain(target))
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
    out_value = nodes[first_deep.nodes[position]].meta.get("example_value")
    base_value = base.meta.get("example_value")
    same = (
        isinstance(out_value, torch.Tensor)
        and isinstance(base_value, torch.Tensor)
        and out_value.shape == base_value.shape
        and out_value.dtype == base_value.dtype
    )
    return base.name if same else None


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
            prediction = _weighted_sum(graph, coefficients, features)
            if stream.base is not None:
                prediction = graph.call_function(operator.add, (nodes[stream.base], prediction))
            nodes[stream.output].replace_all_uses_with(prediction, delete_user_cb=lambda user: user.name not in inside)
    counters["hero"]["deep_blocks_extrapolated"] += len(segment.blocks)
    return new_graph_module(gm, graph)


def _weighted_sum(graph: fx.Graph, coefficients: fx.Node, features: list[fx.Node]) -> fx.Node:
    total: fx.Node | None = None
    for i, feature in enumerate(features):
        term = graph.call_function(operator.mul, (graph.call_function(operator.getitem, (coefficients, i)), feature))
        total = term if total is None else graph.call_function(operator.add, (total, term))
    assert total is not None
    return total
