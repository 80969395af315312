"""Which shallow blocks token refresh rewrites on cheap steps, and the token grid their refresh subset is cut from.

A shallow block is refreshed when the cheap variant still reads its output (with output caching none is: the
deep segment's prediction no longer depends on them) and the token-axis analysis accepts it; the others run
in full or not at all, each with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod

import torch
import torch.fx as fx

from hero_compile.passes.discover_blocks import Block, BlockStack
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import live_nodes, nodes_by_name, runs_collectives
from hero_compile.passes.refresh import BlockRefresh, plan_block_refresh
from hero_compile.passes.token_axis import analyze_token_axis
from hero_compile.passes.token_grid import find_token_grid

NOT_RUN_ON_CHEAP_STEPS = "not run on cheap steps: only the extrapolated deep blocks read it"

SHARDED_TOKENS = ("context parallelism: each rank holds a shard of the tokens, and a subset chosen per shard would "
                  "not be patch-balanced over the whole token grid")


@dataclass
class RefreshPlan:
    """The refreshed shallow blocks, the token grid they share, and why each other shallow block is not refreshed."""

    blocks: list[BlockRefresh] = field(default_factory=list)
    token_grid: tuple[int, ...] | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def plan_refresh(gm: fx.GraphModule, cheap_gm: fx.GraphModule, stack: BlockStack, split: int) -> RefreshPlan:
    """How token refresh rewrites the shallow blocks ``stack.blocks[:split]`` of ``gm``, whose cheap variant so
    far (deep segment extrapolated) is ``cheap_gm``."""
    plan = RefreshPlan()
    live = live_nodes(cheap_gm.graph)
    nodes = nodes_by_name(gm.graph)
    sharded = runs_collectives(gm.graph)
    for block in stack.blocks[:split]:
        if not any(name in live for name in block.outputs):
            plan.skipped[block.path] = NOT_RUN_ON_CHEAP_STEPS
            continue
        if sharded:
            plan.skipped[block.path] = SHARDED_TOKENS
            continue
        try:
            plan.blocks.append(plan_block(gm, stack, block, nodes))
        except RewriteUnsupported as reason:
            plan.skipped[block.path] = str(reason)
    if plan.blocks:
        plan.token_grid = _token_grid(plan.blocks[0], stack, nodes)
    return plan


def plan_block(gm: fx.GraphModule, stack: BlockStack, block: Block, nodes: dict[str, fx.Node]) -> BlockRefresh:
    """How token refresh rewrites ``block`` (``nodes``: ``gm``'s nodes by name); raises
    :class:`RewriteUnsupported` with the reason it cannot."""
    stream = refreshed_stream(stack.stream_inputs(block, nodes))
    return plan_block_refresh(block, analyze_token_axis(gm, block, stream.name), stream.name)


def refreshed_stream(streams: Sequence[fx.Node]) -> fx.Node:
    """Of a block's token streams, the one with the most tokens (video, not text) is refreshed; the others are
    always recomputed in full."""
    return max(streams, key=lambda s: _sequence_length(s.meta["example_value"]))


def _token_grid(first: BlockRefresh, stack: BlockStack, nodes: dict[str, fx.Node]) -> tuple[int, ...]:
    """The grid (frames, height, width) the patch embedding laid the tokens out on, or their count alone."""
    stream = refreshed_stream(stack.stream_inputs(first.block, nodes))
    grid = find_token_grid(stream, first.axes.token_inputs[stream.name].dim)
    return grid if prod(grid) == first.axes.token_count else (first.axes.token_count,)


def _sequence_length(value: torch.Tensor) -> int:
    size = value.shape[1] if value.dim() >= 3 else value.shape[0]
    # A symbolic length is compared by its example value: int() would specialize the whole graph to it.
    return size if isinstance(size, int) else int(size.node.hint or 0)
