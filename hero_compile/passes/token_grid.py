"""Read the token grid (frames, height, width in tokens) off the patch-embedding reshape of the prelude."""

from __future__ import annotations

from math import prod
from typing import Any

import torch
import torch.fx as fx

from hero_compile.passes.graph_surgery import flat_args

_RESHAPES = {"view", "reshape", "flatten", "unflatten", torch.reshape, torch.flatten}
_TRANSPOSES = {"transpose", torch.transpose, "permute", torch.permute}
_MAX_HOPS = 64


def find_token_grid(stream_input: fx.Node, axis: int) -> tuple[int, ...]:
    """The dims merged into the token axis of ``stream_input``, found by walking back to the reshape that
    merged them (through ops that keep the token axis in place), each merged dim split further the same way
    (Mochi merges the frames with each frame's flattened height x width); ``(tokens,)`` if there is none."""
    node, value = stream_input, _tensor(stream_input)
    tokens = int(value.shape[axis])
    for _ in range(_MAX_HOPS):
        if node.target in _RESHAPES:
            source = flat_args(node)[0]
            merged = _merged_dims(list(_tensor(source).shape), list(_tensor(node).shape), axis)
            if merged is None:
                break
            if len(merged) > 1:
                return tuple(size for dim in merged for size in find_token_grid(source, dim))
            node, axis = source, merged[0]
            continue
        if node.target in _TRANSPOSES:
            # A patch embedding flattens the grid, then moves the tokens before the channels.
            node, axis = flat_args(node)[0], _source_dim(node, axis)
            continue
        same = [a for a in flat_args(node) if _keeps_axis(a, _tensor(node), axis)]
        if not same:
            break
        node = same[0]
    return (tokens,)


def _source_dim(node: fx.Node, axis: int) -> int:
    """The dimension of a transpose's or permute's input that becomes its output dimension ``axis``."""
    rank = _tensor(node).dim()
    args: list[Any] = list(node.args[1:])
    if node.target in ("permute", torch.permute):
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return int(dims[axis]) % rank
    first, second = (int(d) % rank for d in args[:2])
    return second if axis == first else first if axis == second else axis


def _tensor(node: fx.Node) -> Any:
    return node.meta.get("example_value")


def _keeps_axis(arg: fx.Node, out: Any, axis: int) -> bool:
    value = _tensor(arg)
    return (
        isinstance(value, torch.Tensor)
        and isinstance(out, torch.Tensor)
        and value.dim() == out.dim()
        and value.shape[axis] == out.shape[axis]
    )


def _merged_dims(in_shape: list[int], out_shape: list[int], axis: int) -> list[int] | None:
    """Input dims whose product forms output dim ``axis`` (equal prefix products before and after)."""
    before, after = prod(out_shape[:axis]), prod(out_shape[: axis + 1])
    # Leading size-1 dims (a batch of one) belong before the token axis, not in it.
    starts = [i for i in range(len(in_shape)) if prod(in_shape[:i]) == before]
    if not starts:
        return None
    start = starts[-1] if prod(in_shape[: starts[-1] + 1]) <= after else starts[0]
    stop = next((i for i in range(start + 1, len(in_shape) + 1) if prod(in_shape[:i]) == after), None)
    return None if stop is None else list(range(start, stop))
