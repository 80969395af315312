"""Shallow-block token refresh: on a cheap step a block recomputes only a subset of its tokens.

For each refreshed block the ``cheap`` variant gains a cached full-token output. The block's token-wise ops
run on the tokens gathered at ``refresh_indices``; fused attention takes queries from the subset and keys and
values from every token's current input, so it stays one ``scaled_dot_product_attention`` call. Values the
key/value path computes for all tokens anyway are gathered rather than recomputed. The subset's outputs are
scattered into the cache, which becomes the block's output and is returned as the new cache.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeGuard

import torch
import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.passes.discover_blocks import Block
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import (
    append_outputs,
    append_placeholders,
    copy_graph,
    flat_args,
    new_graph_module,
)
from hero_compile.passes.token_axis import ArgumentEdit, ResizeView, Segment, SliceTokens, TokenAxis, TokenAxisMap


@dataclass(frozen=True)
class BlockRefresh:
    """A block to refresh, its token axes and what becomes of its outputs."""

    block: Block
    axes: TokenAxisMap
    cached_output: str
    """The refreshed stream's output: the subset is scattered into its cache."""
    recomputed_outputs: tuple[str, ...]
    """Outputs made of fixed tokens only (a dual-stream block's text stream): recomputed in full."""

    def cached_values(self, cache_keys_values: bool) -> list[str]:
        """What the block caches: its output, then each attention's keys and values if they are cached."""
        keys_values = [name for attention in self.cached_attention(cache_keys_values)
                       for name in self.axes.attention[attention][1:]]
        return [self.cached_output, *keys_values]

    def cached_attention(self, cache_keys_values: bool) -> list[str]:
        """The attention nodes whose keys and values are cached. Keys and values of data-dependent length (text
        tokens packed with ``nonzero()``) have no cache of static size: they are computed from every token."""
        if not cache_keys_values:
            return []
        return [name for name, (_, key, value) in self.axes.attention.items()
                if all(_static(self.axes.axis(n)) for n in (key, value))]


def plan_block_refresh(block: Block, axes: TokenAxisMap, stream_input: str) -> BlockRefresh:
    """Check that ``block`` returns its refreshed tokens in one output, along the axis it read them on."""
    cached: list[tuple[str, TokenAxis]] = []
    recomputed: list[tuple[str, TokenAxis]] = []
    for name in block.outputs:
        axis = axes.axis(name)
        if axis is None:
            if name in axes.axes:
                raise RewriteUnsupported(f"block {block.path} returns a tuple carrying tokens ({name!r})")
            continue
        (recomputed if not axis.refreshed else cached).append((name, axis))
    if len(cached) != 1:
        raise RewriteUnsupported(f"block {block.path} returns its refreshed tokens in {len(cached)} outputs")
    name, axis = cached[0]
    if axis != axes.token_inputs[stream_input]:
        raise RewriteUnsupported(f"block {block.path} returns its tokens with another layout than it reads them")
    return BlockRefresh(block, axes, name, tuple(n for n, _ in recomputed))


def refresh_shallow_blocks(
    gm: fx.GraphModule, plans: Sequence[BlockRefresh], refresh_count: int, cache_keys_values: bool
) -> fx.GraphModule:
    """The cheap variant's refresh. New inputs: ``refresh_indices`` (``refresh_count`` token indices), then each
    planned block's caches (:meth:`BlockRefresh.cached_values`); new outputs: the updated caches, same order."""
    graph, nodes = copy_graph(gm.graph)
    counts = [len(plan.cached_values(cache_keys_values)) for plan in plans]
    names = [f"hero_refresh_cache_{b}_{i}" for b, count in enumerate(counts) for i in range(count)]
    indices, *flat_caches = append_placeholders(graph, ["hero_refresh_indices", *names])
    starts = [sum(counts[:b]) for b in range(len(plans))]
    caches = [flat_caches[start : start + count] for start, count in zip(starts, counts)]
    # Last block first: a block's rewrite redirects the users of its outputs, and the next block's plan names
    # its input as that original output.
    updated = [
        _BlockRewrite(graph, nodes, plan, indices, refresh_count).apply(block_caches, cache_keys_values)
        for plan, block_caches in reversed(list(zip(plans, caches)))
    ]
    append_outputs(graph, [value for block in reversed(updated) for value in block])
    counters["hero"]["blocks_refreshed"] += len(plans)
    return new_graph_module(gm, graph)


class _BlockRewrite:
    """Builds the subset computation of one block beside the original, which keeps the key/value path."""

    def __init__(
        self,
        graph: fx.Graph,
        nodes: dict[str, fx.Node],
        plan: BlockRefresh,
        indices: fx.Node,
        refresh_count: int,
    ) -> None:
        self.graph, self.nodes, self.plan = graph, nodes, plan
        self.indices, self.refresh_count = indices, refresh_count
        self.subset: dict[str, fx.Node] = {}
        self.gathered: dict[str, fx.Node] = {}
        self.layout_indices: dict[tuple[Segment, ...], fx.Node] = {}

    def apply(self, caches: list[fx.Node], cache_keys_values: bool) -> list[fx.Node]:
        graph, nodes, plan, axes = self.graph, self.nodes, self.plan, self.plan.axes
        output_cache, *key_value_caches = caches
        cached_attention = plan.cached_attention(cache_keys_values)
        key_value_path = _ancestors_in_block(
            [nodes[name] for attention, (_, key, value) in axes.attention.items() if attention not in cached_attention
             for name in (key, value)], set(plan.block.nodes)
        )
        updated_keys_values: list[fx.Node] = []
        with graph.inserting_before(nodes[plan.block.nodes[-1]].next):
            for name in plan.block.nodes:
                if name not in axes.axes:
                    continue
                node, axis = nodes[name], axes.axis(name)
                if name in key_value_path and _static(axis):
                    # Computed for all tokens for the keys and values anyway: gather instead of recomputing.
                    self.subset[name] = graph.call_function(torch.index_select, (node, axis.dim, self._index(axis)))
                elif name in axes.attention:
                    query, key, value = (nodes[n] for n in axes.attention[name])
                    assert callable(node.target)
                    if name in cached_attention:
                        key = self._scatter(key_value_caches.pop(0), key)
                        value = self._scatter(key_value_caches.pop(0), value)
                        updated_keys_values += [key, value]
                    # The mask's query rows, if it has some, are gathered with the queries.
                    options = {k: self._on_subset(v) if isinstance(v, fx.Node) else v
                               for k, v in node.kwargs.items() if k not in ("query", "key", "value")}
                    extra = [self._on_subset(a) if isinstance(a, fx.Node) else a for a in node.args[3:]]
                    self.subset[name] = graph.call_function(
                        node.target, (self._on_subset(query), key, value, *extra), options
                    )
                else:
                    self.subset[name] = graph.node_copy(node, self._on_subset)
                    if name in axes.edits:
                        self._edit(self.subset[name], axes.edits[name])
            output = nodes[plan.cached_output]
            updated = self._scatter(output_cache, output)
        output.replace_all_uses_with(updated, delete_user_cb=lambda user: user is not updated)
        for name in plan.recomputed_outputs:
            nodes[name].replace_all_uses_with(self.subset[name])
        return [updated, *updated_keys_values]

    def _scatter(self, cache: fx.Node, value: object) -> fx.Node:
        """``cache`` with the subset's positions overwritten by the subset computation of ``value``."""
        assert isinstance(value, fx.Node)
        axis = self.plan.axes.axis(value.name)
        assert axis is not None
        return self.graph.call_function(
            torch.index_copy, (cache, axis.dim, self._index(axis), self.subset[value.name])
        )

    def _on_subset(self, arg: fx.Node) -> fx.Node:
        if arg.name in self.subset:
            return self.subset[arg.name]
        axis = self.plan.axes.token_inputs.get(arg.name)
        if axis is None:
            return arg
        if arg.name not in self.gathered:
            self.gathered[arg.name] = self.graph.call_function(torch.index_select, (arg, axis.dim, self._index(axis)))
        return self.gathered[arg.name]

    def _index(self, axis: TokenAxis) -> fx.Node:
        """Positions of the subset along ``axis``: fixed segments whole, the refreshed one at the indices."""
        if axis.layout not in self.layout_indices:
            graph, parts, offset = self.graph, [], 0
            for segment in axis.layout:
                if segment.refreshed:
                    parts.append(graph.call_function(operator.add, (self.indices, offset)))
                else:
                    # A function, not a tensor method: AOTAutograd's cache bypasses methods on added values.
                    device = graph.call_function(getattr, (self.indices, "device"))
                    parts.append(graph.call_function(torch.arange, (offset, offset + segment.static_length),
                                                     {"device": device}))
                offset += segment.static_length
            self.layout_indices[axis.layout] = parts[0] if len(parts) == 1 else graph.call_function(torch.cat, (parts,))
        return self.layout_indices[axis.layout]

    def _edit(self, node: fx.Node, edit: ArgumentEdit) -> None:
        """Rewrite token counts and positions in ``node``'s arguments for the subset."""
        count = self.refresh_count
        if isinstance(edit, ResizeView):
            _resize_view(node, edit.position, edit.axis.subset_length(count))
        elif isinstance(edit, SliceTokens):
            source, index = node.args[:2]
            entries = list(index) if isinstance(index, tuple) else [index]
            entries[edit.entry] = slice(
                edit.axis.subset_position(edit.start, count), edit.axis.subset_position(edit.stop, count)
            )
            node.args = (source, tuple(entries) if isinstance(index, tuple) else entries[0], *node.args[2:])
        else:
            bounds = [sum(edit.sizes[:i]) for i in range(len(edit.sizes) + 1)]
            mapped = [edit.axis.subset_position(b, count) for b in bounds]
            sizes = [b - a for a, b in pairwise(mapped)]
            node.args = (node.args[0], sizes, *node.args[2:])
            node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("split_size_or_sections", "split_sizes")}


def _static(axis: TokenAxis | None) -> TypeGuard[TokenAxis]:
    """Whether ``axis`` has a static length: runs of data-dependent length are computed, never gathered."""
    return axis is not None and axis.length is not None


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
