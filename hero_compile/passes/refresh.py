"""Shallow-block token refresh: on a cheap step a block recomputes only a subset of its tokens.

For each refreshed block the ``cheap`` variant gains a cached full-token output. The block's token-wise ops
run on the tokens gathered at ``refresh_indices``; fused attention takes queries from the subset and keys and
values from every token's current input, so it stays one ``scaled_dot_product_attention`` call. Values the
key/value path computes for all tokens anyway are gathered rather than recomputed. The subset's outputs are
scattered into the cache, which becomes the block's output and is returned as the new cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.passes.discover_blocks import Block, flat_args
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_copy import append_outputs, append_placeholders, copy_graph, new_graph_module
from hero_compile.passes.token_axis import TokenAxisMap


@dataclass(frozen=True)
class BlockRefresh:
    """A block to refresh, its token axes and the output whose tokens are cached."""

    block: Block
    axes: TokenAxisMap
    output: str


def plan_block_refresh(block: Block, axes: TokenAxisMap, stream_input: str) -> BlockRefresh:
    """Check that ``block`` passes exactly its token stream on, along the axis it received it on."""
    if len(block.outputs) != 1:
        raise RewriteUnsupported(f"block {block.path} has {len(block.outputs)} outputs; refresh needs one stream")
    output = block.outputs[0]
    if axes.axes.get(output) != axes.token_inputs[stream_input]:
        raise RewriteUnsupported(f"block {block.path} returns its tokens along another axis than it reads them")
    return BlockRefresh(block, axes, output)


def refresh_shallow_blocks(gm: fx.GraphModule, plans: Sequence[BlockRefresh], refresh_count: int) -> fx.GraphModule:
    """The cheap variant's refresh: new inputs ``refresh_indices`` (``refresh_count`` token indices) and one
    cached output per planned block; new outputs: the updated caches, in the same order."""
    graph, nodes = copy_graph(gm.graph)
    indices, *caches = append_placeholders(
        graph, ["hero_refresh_indices", *(f"hero_block_cache_{i}" for i in range(len(plans)))]
    )
    # Last block first: a block's rewrite redirects the users of its output, and the next block's plan names
    # its input as that original output.
    updated = [
        _refresh_block(graph, nodes, plan, indices, cache, refresh_count)
        for plan, cache in reversed(list(zip(plans, caches)))
    ]
    append_outputs(graph, updated[::-1])
    graph.eliminate_dead_code()
    counters["hero"]["blocks_refreshed"] += len(plans)
    return new_graph_module(gm, graph)


def _refresh_block(
    graph: fx.Graph,
    nodes: dict[str, fx.Node],
    plan: BlockRefresh,
    indices: fx.Node,
    cache: fx.Node,
    refresh_count: int,
) -> fx.Node:
    block, axes = plan.block, plan.axes
    in_block = set(block.nodes)
    key_value_path = _ancestors_in_block(
        [arg for name in axes.attention for arg in nodes[name].args[1:3]], in_block
    )
    subset: dict[str, fx.Node] = {}
    gathered: dict[str, fx.Node] = {}

    def on_subset(arg: fx.Node) -> fx.Node:
        if arg.name in subset:
            return subset[arg.name]
        if arg.name in axes.token_inputs:
            if arg.name not in gathered:
                gathered[arg.name] = graph.call_function(
                    torch.index_select, (arg, axes.token_inputs[arg.name], indices)
                )
            return gathered[arg.name]
        return arg

    with graph.inserting_before(nodes[block.nodes[-1]].next):
        for name in block.nodes:
            if name not in axes.axes:
                continue
            node = nodes[name]
            if name in key_value_path and isinstance(node.meta.get("example_value"), torch.Tensor):
                # Computed for all tokens for the keys and values anyway: gather instead of recomputing.
                subset[name] = graph.call_function(torch.index_select, (node, axes.axes[name], indices))
            elif name in axes.attention:
                query, key, value = node.args[:3]
                assert callable(node.target) and isinstance(query, fx.Node)
                subset[name] = graph.call_function(node.target, (on_subset(query), key, value), dict(node.kwargs))
            else:
                subset[name] = graph.node_copy(node, on_subset)
                if name in axes.resized_views:
                    _resize_view(subset[name], axes.resized_views[name], refresh_count)
        output = nodes[plan.output]
        updated = graph.call_function(torch.index_copy, (cache, axes.axes[plan.output], indices, subset[plan.output]))
    output.replace_all_uses_with(updated, delete_user_cb=lambda user: user is not updated)
    return updated


def _ancestors_in_block(roots: Sequence[object], in_block: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [r for r in roots if isinstance(r, fx.Node)]
    while stack:
        node = stack.pop()
        if node.name in seen or node.name not in in_block:
            continue
        seen.add(node.name)
        stack.extend(flat_args(node))
    return seen


def _resize_view(node: fx.Node, position: int, size: int) -> None:
    """Set the token dimension of a view/reshape's size arguments to the subset size."""
    source, *rest = node.args
    rest = list(rest)
    packed = len(rest) == 1 and isinstance(rest[0], (tuple, list))
    sizes: list[Any] = list(rest[0]) if packed else rest  # type: ignore[arg-type]
    if sizes[position] != -1:
        sizes[position] = size
    node.args = (source, tuple(sizes)) if packed else (source, *sizes)
