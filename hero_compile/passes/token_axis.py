"""Token-axis analysis: which dimension of every value inside a block indexes the refreshed tokens.

Starting from the block's refreshed stream input, each op maps the token axis of its inputs to the token axis
of its output: views and reshapes by matching prefix products of the shapes, permutes by their permutation,
elementwise ops by broadcasting alignment, and so on. Values with no token axis (adaLN modulation, weights)
are shared by all tokens. External inputs that broadcast against the token axis (rotary tables, positional
embeddings) are recorded so the refresh rewrite can gather them. Dual-stream blocks concatenate text and video
tokens: the axis then has a *layout*, a sequence of segments that are either refreshed (the subset is kept) or
fixed (always computed in full), and slices or splits along it must fall on segment boundaries. A fixed segment
may have a data-dependent length (Mochi packs its valid text tokens with ``nonzero()`` after the video tokens):
it is followed through concatenation, transposes and attention until a pad gives it back a static length. The
analysis never infers an axis from a size: a token count equal to head_dim, hidden size or frame count works alike.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from hero_compile.passes.discover_blocks import Block
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import flat_args, nodes_by_name


@dataclass(frozen=True)
class Segment:
    """A run of positions along a token axis: the refreshed stream's tokens, or fixed tokens (e.g. text)."""

    refreshed: bool
    length: int | None
    """``None`` for fixed tokens whose count depends on data (packed with ``nonzero()``)."""

    @property
    def static_length(self) -> int:
        """``length``, where the analysis has made sure it is static: runs of data-dependent length are never
        cut, resized or gathered."""
        assert self.length is not None, "a run of data-dependent length reached a static-length rewrite"
        return self.length


@dataclass(frozen=True)
class TokenAxis:
    """Where the tokens are in a value, and what lies along that dimension."""

    dim: int
    layout: tuple[Segment, ...]

    @property
    def length(self) -> int | None:
        """The dimension's size, ``None`` where it depends on data."""
        lengths = [s.length for s in self.layout]
        return None if None in lengths else sum(length for length in lengths if length is not None)

    @property
    def refreshed(self) -> bool:
        return any(s.refreshed for s in self.layout)

    def subset_length(self, refresh_count: int) -> int:
        """The dimension's size when the refreshed segment holds ``refresh_count`` tokens."""
        return sum(refresh_count if s.refreshed else s.static_length for s in self.layout)

    def subset_position(self, position: int, refresh_count: int) -> int:
        """A segment boundary in full coordinates, in subset coordinates."""
        offset, mapped = 0, 0
        for segment in self.layout:
            if offset == position:
                return mapped
            offset += segment.static_length
            mapped += refresh_count if segment.refreshed else segment.static_length
        assert offset == position, "positions are checked to be segment boundaries"
        return mapped

    def moved(self, dim: int) -> TokenAxis:
        return TokenAxis(dim, self.layout)


# A tuple-valued node (chunk, split) has one entry per element.
NodeAxis = TokenAxis | tuple[TokenAxis | None, ...]


@dataclass(frozen=True)
class ResizeView:
    """A ``view``/``reshape`` whose size argument at ``position`` is the token dimension."""

    position: int
    axis: TokenAxis


@dataclass(frozen=True)
class SliceTokens:
    """Indexing that slices the token axis: entry ``entry`` of the index is ``slice(start, stop)``."""

    entry: int
    start: int
    stop: int
    axis: TokenAxis


@dataclass(frozen=True)
class SplitTokens:
    """``split(sizes, dim)`` along the token axis."""

    sizes: tuple[int, ...]
    axis: TokenAxis


ArgumentEdit = ResizeView | SliceTokens | SplitTokens


@dataclass
class TokenAxisMap:
    """Token axes of one block. Node names refer to the analysed graph."""

    token_count: int
    axes: dict[str, NodeAxis] = field(default_factory=dict)
    """Block nodes that depend on the refreshed tokens, and their token axis."""
    token_inputs: dict[str, TokenAxis] = field(default_factory=dict)
    """External inputs read along the token axis (the stream input, rotary tables), and their axis."""
    edits: dict[str, ArgumentEdit] = field(default_factory=dict)
    """Nodes whose arguments name token positions or counts, to be rewritten for the subset."""
    attention: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Fused attention nodes and their query, key and value: queries follow the subset, keys and values cover
    every token."""

    def axis(self, name: str) -> TokenAxis | None:
        value = self.axes.get(name)
        return value if isinstance(value, TokenAxis) else None


def analyze_token_axis(gm: fx.GraphModule, block: Block, stream_input: str) -> TokenAxisMap:
    """The token axes inside ``block`` whose refreshed tokens enter through ``stream_input``.

    The tokens are a dimension of the stream input other than its last (channels): the largest one the analysis
    can follow through the block, dimension 1 of a ``(batch, tokens, ...)`` tensor first among equals. A temporal
    block's input ``(positions, frames, channels)`` has two candidates; its spatial positions, more numerous,
    ride on the batch axis of its attention. Raises :class:`RewriteUnsupported` naming, for each candidate, the
    node and op where the token axis cannot be followed.
    """
    nodes = nodes_by_name(gm.graph)
    start = _tensor(nodes[stream_input])
    conventional = 1 if start.dim() >= 3 else 0
    count = start.shape[conventional]
    if not isinstance(count, int):
        # Dynamo made the sequence length symbolic (the model ran at several lengths): the refresh subset's
        # size and the views around it are static, so the block runs in full on cheap steps.
        raise RewriteUnsupported(f"the token count of '{stream_input}' is dynamic ({count}): token refresh needs "
                                 "a static sequence length")
    candidates = sorted(
        (d for d in range(max(start.dim() - 1, 1)) if isinstance(start.shape[d], int) and start.shape[d] > 1),
        key=lambda d: (-start.shape[d], d != conventional),
    ) or [conventional]
    failures: list[tuple[int, RewriteUnsupported]] = []
    for dim in candidates:
        try:
            return _analyze_along(nodes, block, stream_input, dim)
        except RewriteUnsupported as reason:
            failures.append((dim, reason))
    if len(failures) == 1:
        raise failures[0][1]
    raise RewriteUnsupported("; ".join(f"tokens along dim {d} ({start.shape[d]}): {r}" for d, r in failures))


def _analyze_along(nodes: dict[str, fx.Node], block: Block, stream_input: str, dim: int) -> TokenAxisMap:
    count = _tensor(nodes[stream_input]).shape[dim]
    result = TokenAxisMap(token_count=count)
    result.token_inputs[stream_input] = TokenAxis(dim, (Segment(True, count),))
    inside = set(block.nodes)
    for name in block.nodes:
        axis = _Rule(nodes[name], result, inside).output_axis()
        if axis is not None:
            result.axes[name] = axis
    return result


class _Rule:
    """Maps the token axis through one node."""

    def __init__(self, node: fx.Node, analysis: TokenAxisMap, inside: set[str]) -> None:
        self.node = node
        self.analysis = analysis
        self.inside = inside

    def axis_of(self, value: Any) -> NodeAxis | None:
        if not isinstance(value, fx.Node):
            return None
        if value.name in self.inside:
            return self.analysis.axes.get(value.name)
        return self.analysis.token_inputs.get(value.name)

    def tensor_axis_of(self, value: Any) -> TokenAxis | None:
        axis = self.axis_of(value)
        return axis if isinstance(axis, TokenAxis) else None

    def reject(self, why: str) -> RewriteUnsupported:
        return RewriteUnsupported(f"token axis lost at node {self.node.name!r} ({_op_name(self.node)}): {why}")

    def output_axis(self) -> NodeAxis | None:
        rule = _rule_for(self.node)
        if (free_unbacked_symbols(self.node.meta.get("example_value"))
                and rule not in _FOLLOW_DATA_DEPENDENT_RUNS
                and any(self.axis_of(a) is not None for a in flat_args(self.node))):
            raise self.reject(
                "its size depends on data (values packed with nonzero()): a run of tokens of data-dependent length "
                "beside the refreshed ones is followed through cat, transpose and attention to the pad that gives "
                "it a static length, not through this op")
        if rule in (_elementwise, _concatenate):
            assert rule is not None
            return rule(self)
        if not any(self.axis_of(a) is not None for a in flat_args(self.node)):
            return None
        if rule is None:
            raise self.reject("op not understood by the token-axis analysis")
        return rule(self)

    def record_token_input(self, arg: fx.Node, axis: TokenAxis) -> None:
        """``arg``, which does not depend on the refreshed tokens, lines up with them along ``axis`` (a position
        table: read from outside the block, or computed inside it from one, as rotary ``cos``/``sin`` are).
        Row ``i`` of the result depends on row ``i`` of ``arg`` only, so the subset reads ``arg`` gathered at
        the refreshed positions."""
        if not axis.refreshed:
            return  # fixed tokens are read in full, no gather needed
        known = self.analysis.token_inputs.get(arg.name)
        if known is not None and known != axis:
            raise self.reject(f"input {arg.name!r} is read with two different token axes")
        if axis.length is None:
            raise self.reject(f"input {arg.name!r} lines up with tokens of data-dependent length")
        if _tensor(arg).shape[axis.dim] != axis.length:
            raise self.reject(f"input {arg.name!r} broadcasts against the tokens with another length")
        self.analysis.token_inputs[arg.name] = axis


def _tensor(node: Any) -> Any:
    value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    if not isinstance(value, (torch.Tensor, tuple, list)):
        raise RewriteUnsupported(f"node {getattr(node, 'name', node)!r} has no tensor example value")
    return value


def _positional(node: fx.Node) -> Any:
    # fx types arguments as a wide union; the rules check what they rely on.
    return node.args


def _keywords(node: fx.Node) -> Any:
    return node.kwargs


def _mask_rows_follow_the_queries(rule: _Rule, query: Any, mask: Any) -> None:
    """An attention mask (padding of the text keys, HunyuanVideo's and LTX-Video's) masks each query row on its
    own: a mask without query rows (size 1 there) serves the subset unchanged; one with a row per query is
    gathered with them. A mask computed from the refreshed tokens is not understood."""
    if mask is None:
        return
    if not isinstance(mask, fx.Node) or rule.axis_of(mask) is not None:
        raise rule.reject("attention with a mask computed from the tokens")
    query_axis = rule.tensor_axis_of(query)
    rows = _tensor(mask).dim() - 2
    if query_axis is None or rows < 0:
        raise rule.reject("attention with a mask")
    if _tensor(mask).shape[rows] != 1:
        rule.record_token_input(mask, query_axis.moved(rows))


def _op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _normalize(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _argument(node: fx.Node, index: int, name: str, default: Any) -> Any:
    args = _positional(node)
    return args[index] if index < len(args) else _keywords(node).get(name, default)


def _elementwise(rule: _Rule) -> NodeAxis | None:
    """Broadcasting: tensors are right-aligned; an operand with a size > 1 at the token position has tokens."""
    node = rule.node
    out = node.meta.get("example_value")
    if not isinstance(out, torch.Tensor):
        return None
    rank = out.dim()
    aligned = {
        axis.moved(axis.dim + rank - _tensor(arg).dim())
        for arg in flat_args(node)
        if (axis := rule.tensor_axis_of(arg)) is not None
    }
    if not aligned:
        return None
    if len(aligned) > 1:
        raise rule.reject("operands disagree on the token axis")
    axis = aligned.pop()
    for arg in flat_args(node):
        value = arg.meta.get("example_value")
        if rule.axis_of(arg) is not None or not isinstance(value, torch.Tensor):
            continue
        dim = axis.dim - (rank - value.dim())
        if dim >= 0 and value.shape[dim] != 1:
            rule.record_token_input(arg, axis.moved(dim))
    return axis


def _concatenate(rule: _Rule) -> NodeAxis | None:
    tensors = _argument(rule.node, 0, "tensors", ())
    dim = _argument(rule.node, 1, "dim", 0)
    rank = rule.node.meta["example_value"].dim()
    axes = [rule.tensor_axis_of(t) for t in tensors]
    known = {a.dim for a in axes if a is not None}
    if not known:
        return None
    if len(known) > 1:
        raise rule.reject("concatenated tensors disagree on the token axis")
    token_dim = known.pop()
    if _normalize(dim, rank) != token_dim:
        layouts = {a.layout for a in axes if a is not None}
        if len(layouts) > 1:
            raise rule.reject("concatenated tensors have different token layouts")
        axis = TokenAxis(token_dim, layouts.pop())
        for tensor, tensor_axis in zip(tensors, axes):
            if tensor_axis is None:
                rule.record_token_input(tensor, axis)
        return axis
    # Along the token axis (joint text+video attention): the layouts follow each other.
    layout: list[Segment] = []
    for tensor, tensor_axis in zip(tensors, axes):
        run = Segment(False, _run_length(_tensor(tensor).shape[token_dim]))
        layout.extend(tensor_axis.layout if tensor_axis else (run,))
    if sum(s.refreshed for s in layout) > 1:
        raise rule.reject("two refreshed token runs on one axis")
    return TokenAxis(token_dim, _settled(rule, layout, _tensor(rule.node).shape[token_dim]))


def _run_length(size: Any) -> int | None:
    """A fixed run's length: ``None`` where it depends on data (a size ``nonzero()`` packed values to)."""
    return None if free_unbacked_symbols(size) else int(size)


def _settled(rule: _Rule, layout: list[Segment], size: Any) -> tuple[Segment, ...]:
    """``layout`` with each fixed run of data-dependent length merged with the fixed runs beside it (the
    boundaries between them are unknown) and, where the axis has a static ``size`` and one such run is left, its
    length found as the difference: Mochi's packed text padded back to all of the text."""
    runs: list[Segment] = []
    for segment in layout:
        if runs and not (segment.refreshed or runs[-1].refreshed) and None in (segment.length, runs[-1].length):
            runs[-1] = Segment(False, None)
        else:
            runs.append(segment)
    unknown = [s for s in runs if s.length is None]
    if len(unknown) != 1 or not isinstance(size, int):
        return tuple(runs)
    length = size - sum(s.length for s in runs if s.length is not None)
    if length < 0:
        raise rule.reject("padding crops the refreshed tokens")
    return tuple(Segment(False, length) if s.length is None else s for s in runs)


def _stack(rule: _Rule) -> NodeAxis | None:
    """``stack`` inserts a dimension; the tensors must agree on their tokens (broadcasting is not allowed)."""
    tensors = _argument(rule.node, 0, "tensors", ())
    axes = {rule.tensor_axis_of(t) for t in tensors}
    if len(axes) != 1 or None in axes:
        raise rule.reject("stacked tensors disagree on the token axis")
    axis = axes.pop()
    assert axis is not None
    dim = _normalize(_argument(rule.node, 1, "dim", 0), _tensor(rule.node).dim())
    return axis.moved(axis.dim + 1) if dim <= axis.dim else axis


def _keep_unless_last(rule: _Rule) -> NodeAxis | None:
    """Linear layers mix the last dimension only."""
    source = _positional(rule.node)[0]
    axis = rule.tensor_axis_of(source)
    if axis is None or axis.dim == _tensor(source).dim() - 1:
        raise rule.reject("the token axis is the contracted dimension or not on the first operand")
    return axis


def _normalization(rule: _Rule) -> NodeAxis | None:
    source = _argument(rule.node, 0, "input", None)
    shape = _argument(rule.node, 1, "normalized_shape", ())
    axis = rule.tensor_axis_of(source)
    if axis is None or axis.dim >= _tensor(source).dim() - len(shape):
        raise rule.reject("normalization over the token axis")
    return axis


def _normalize_along(rule: _Rule) -> NodeAxis | None:
    """``F.normalize(x, p, dim)``: a norm along one dimension, which must not be the token axis."""
    source = _argument(rule.node, 0, "input", None)
    axis = rule.tensor_axis_of(source)
    dim = _normalize(int(_argument(rule.node, 2, "dim", 1)), _tensor(source).dim())
    if axis is None or axis.dim == dim:
        raise rule.reject("normalization over the token axis")
    return axis


def _reshape(rule: _Rule) -> NodeAxis | None:
    """The token dimension must survive as a dimension of its own: equal prefix products before it."""
    source = _positional(rule.node)[0]
    axis = rule.tensor_axis_of(source)
    assert axis is not None
    in_shape = list(_tensor(source).shape)
    out_shape = list(_tensor(rule.node).shape)
    before = prod(in_shape[: axis.dim])
    for j in range(len(out_shape)):
        if prod(out_shape[:j]) == before and out_shape[j] == in_shape[axis.dim]:
            moved = axis.moved(j)
            if rule.node.target in ("view", "reshape", torch.reshape):
                rule.analysis.edits[rule.node.name] = ResizeView(j, moved)
            return moved
    raise rule.reject(f"reshape {in_shape} -> {out_shape} merges or splits the token axis")


def _permute(rule: _Rule) -> NodeAxis | None:
    node = rule.node
    args = _positional(node)
    axis = rule.tensor_axis_of(args[0])
    assert axis is not None
    rank = _tensor(args[0]).dim()
    if node.target in ("transpose", torch.transpose):
        d0, d1 = (_normalize(int(d), rank) for d in args[1:3])
        return axis.moved(d1 if axis.dim == d0 else d0 if axis.dim == d1 else axis.dim)
    dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
    dims = dims or _keywords(node)["dims"]
    return axis.moved([_normalize(int(d), rank) for d in dims].index(axis.dim))


def _split(rule: _Rule) -> NodeAxis | None:
    """chunk/split/unbind: pieces along another dimension keep the axis; a split along it cuts the layout."""
    node = rule.node
    source = _positional(node)[0]
    axis = rule.tensor_axis_of(source)
    assert axis is not None
    rank = _tensor(source).dim()
    unbind = node.target in ("unbind", torch.unbind)
    dim = _normalize(int(_argument(node, 1 if unbind else 2, "dim", 0)), rank)
    pieces = len(_tensor(node))
    if dim != axis.dim:
        piece_axis = axis.moved(axis.dim - 1) if unbind and dim < axis.dim else axis
        return (piece_axis,) * pieces
    sizes = _argument(node, 1, "split_size_or_sections", None) or _argument(node, 1, "split_sizes", None)
    if node.target not in _SPLITS_BY_SIZES or not isinstance(sizes, (list, tuple)):
        raise rule.reject("split along the token axis into equal chunks")
    rule.analysis.edits[node.name] = SplitTokens(tuple(int(s) for s in sizes), axis)
    result: list[TokenAxis | None] = []
    offset = 0
    for size in sizes:
        result.append(_cut(rule, axis, offset, offset + int(size)))
        offset += int(size)
    return tuple(result)


_SPLITS_BY_SIZES = ("split", torch.split, "split_with_sizes", torch.split_with_sizes)


def _first_operand(rule: _Rule) -> NodeAxis | None:
    """``x.type_as(y)``, ``x.to(y)``: the other operand gives only a dtype and a device."""
    return rule.axis_of(_positional(rule.node)[0])


def _repeat_interleave(rule: _Rule) -> NodeAxis | None:
    """Repeats along another dimension (grouped-query attention's key heads) keep the token axis."""
    source = _positional(rule.node)[0]
    axis = rule.tensor_axis_of(source)
    dim = _argument(rule.node, 2, "dim", None)
    if axis is None or dim is None or _normalize(int(dim), _tensor(source).dim()) == axis.dim:
        raise rule.reject("repeats along the token axis")
    return axis


def _pad(rule: _Rule) -> NodeAxis | None:
    """``F.pad`` with zeros: along the token axis, fixed runs of padding before and after the tokens.

    Mochi pads its attention output (video tokens, then the valid text tokens packed with ``nonzero()``) back to
    video plus all text tokens. Dynamo bakes the amount, ``(N + E) - (N + valid)``, from literals and the packed
    count: it never reads the refreshed tokens, so the subset pads by the same amount and the padded text run
    keeps its length E, which the static size of the output gives. Its literals need no rewrite.
    """
    node = rule.node
    source = _argument(node, 0, "input", None)
    axis = rule.tensor_axis_of(source)
    assert axis is not None
    amounts = list(_argument(node, 1, "pad", ()))
    entry = 2 * (_tensor(source).dim() - 1 - axis.dim)  # (before, after) pairs, from the last dimension backwards
    before, after = (_padding(rule, a) for a in (amounts[entry : entry + 2] if entry < len(amounts) else (0, 0)))
    if before == after == 0:
        return axis
    if _argument(node, 2, "mode", "constant") != "constant":
        raise rule.reject("padding along the token axis that copies tokens")
    runs = [*([Segment(False, before)] if before != 0 else []), *axis.layout,
            *([Segment(False, after)] if after != 0 else [])]
    return TokenAxis(axis.dim, _settled(rule, runs, _tensor(node).shape[axis.dim]))


def _padding(rule: _Rule, amount: Any) -> int | None:
    """How many positions a pad amount adds: an int, or ``None`` for an amount computed at run time."""
    value = amount.meta.get("example_value") if isinstance(amount, fx.Node) else amount
    length = value if isinstance(value, int) else None
    if length is not None and length < 0:
        raise rule.reject("negative padding crops the tokens")
    return length


def _cut(rule: _Rule, axis: TokenAxis, start: int, stop: int) -> TokenAxis:
    """The layout between two positions, which must be segment boundaries."""
    kept, offset = [], 0
    boundaries = {0}
    for segment in axis.layout:
        if start <= offset and offset + segment.static_length <= stop:
            kept.append(segment)
        offset += segment.static_length
        boundaries.add(offset)
    if start not in boundaries or stop not in boundaries:
        raise rule.reject(f"tokens [{start}:{stop}] cut through a run of refreshed tokens")
    return TokenAxis(axis.dim, tuple(kept))


def _index(rule: _Rule, source: fx.Node, index: Any) -> tuple[int, TokenAxis] | None:
    """How an index expression maps the token axis: ``(output dim, axis)``; records slices of the tokens."""
    axis = rule.tensor_axis_of(source)
    assert axis is not None
    rank = _tensor(source).dim()
    entries = index if isinstance(index, tuple) else (index,)
    consumed = sum(1 for i in entries if i is not None and i is not Ellipsis)
    out_dim = in_dim = 0
    for entry, item in enumerate(entries):
        if item is Ellipsis:
            skip = rank - consumed
            if in_dim <= axis.dim < in_dim + skip:
                return out_dim + axis.dim - in_dim, axis
            in_dim, out_dim = in_dim + skip, out_dim + skip
        elif item is None:
            out_dim += 1
        elif in_dim == axis.dim:
            if not isinstance(item, slice) or item.step not in (None, 1):
                raise rule.reject("indexing into the token axis")
            if axis.length is None:
                raise rule.reject("slicing tokens of data-dependent length")
            start, stop, _ = item.indices(axis.length)
            if (start, stop) != (0, axis.length):
                rule.analysis.edits[rule.node.name] = SliceTokens(entry, start, stop, axis)
            return out_dim, _cut(rule, axis, start, stop)
        else:
            in_dim += 1
            out_dim += 0 if isinstance(item, int) else 1
    return out_dim + axis.dim - in_dim, axis


def _getitem(rule: _Rule) -> NodeAxis | None:
    source, index = _positional(rule.node)
    source_axis = rule.axis_of(source)
    if isinstance(source_axis, tuple):
        return source_axis[index]
    mapped = _index(rule, source, index)
    assert mapped is not None
    dim, axis = mapped
    return axis.moved(dim)


def _setitem(rule: _Rule) -> NodeAxis | None:
    """``target[index] = value`` (rotary embeddings applied to part of the sequence): the written region and
    the value must agree on their tokens. The node is copied for the subset like any other."""
    target, index, value = _positional(rule.node)
    target_axis = rule.tensor_axis_of(target)
    if target_axis is None:
        raise rule.reject("a value with tokens is written into a tensor without")
    mapped = _index(rule, target, index)
    assert mapped is not None
    dim, region = mapped
    entries = index if isinstance(index, tuple) else (index,)
    region_rank = _tensor(target).dim() - sum(isinstance(e, int) for e in entries) + entries.count(None)
    if isinstance(value, fx.Node) and isinstance(value.meta.get("example_value"), torch.Tensor):
        value_dim = dim - (region_rank - _tensor(value).dim())
        value_axis = rule.tensor_axis_of(value)
        if value_axis is not None and value_axis != region.moved(value_dim):
            raise rule.reject("the written value's tokens do not line up with the region")
        if value_axis is None and value_dim >= 0 and _tensor(value).shape[value_dim] != 1:
            rule.record_token_input(value, region.moved(value_dim))
    return target_axis


def _reduction(rule: _Rule) -> NodeAxis | None:
    node = rule.node
    source = _positional(node)[0]
    axis = rule.tensor_axis_of(source)
    assert axis is not None
    rank = _tensor(source).dim()
    dims = _argument(node, 1, "dim", None)
    if dims is None:
        raise rule.reject("reduction over every dimension, the token axis included")
    dims = [_normalize(int(d), rank) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if axis.dim in dims:
        raise rule.reject("reduction over the token axis")
    keepdim = _argument(node, 2, "keepdim", False)
    return axis if keepdim else axis.moved(axis.dim - sum(d < axis.dim for d in dims))


def _attention(rule: _Rule) -> NodeAxis | None:
    node = rule.node
    # scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, ...),
    # called with positional or keyword arguments (LTX-Video passes them by name).
    query, key, value = (_argument(node, i, name, None) for i, name in enumerate(("query", "key", "value")))
    query_axis = rule.tensor_axis_of(query)
    if query_axis is not None and query_axis.dim < _tensor(query).dim() - 2:
        # The tokens index a batch dimension (the spatial positions of a temporal block, whose sequence is
        # frames): each token attends on its own, so attention is a token-wise op. Keys and values without tokens
        # but with a row per token (text states repeated per frame) are gathered with them.
        return _elementwise(rule)
    if _argument(node, 5, "is_causal", False):
        raise rule.reject("causal attention")
    _mask_rows_follow_the_queries(rule, query, _argument(node, 3, "attn_mask", None))
    if rule.axis_of(key) is None and rule.axis_of(value) is None:
        # Cross-attention (keys and values from the text states): each query row attends on its own, so the
        # subset's queries attend to the same keys and values, unchanged.
        query_axis = rule.tensor_axis_of(query)
        if query_axis is None or query_axis.dim != _tensor(query).dim() - 2:
            raise rule.reject("the query sequence axis is not the token axis of the block input")
        return query_axis
    for role, tensor in (("query", query), ("key", key), ("value", value)):
        axis = rule.tensor_axis_of(tensor)
        if axis is None or axis.dim != _tensor(tensor).dim() - 2:
            raise rule.reject(f"the {role} sequence axis is not the token axis of the block input")
    rule.analysis.attention[node.name] = (query.name, key.name, value.name)
    query_axis = rule.tensor_axis_of(query)
    assert query_axis is not None
    return query_axis


_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.gt, operator.ge, operator.lt, operator.le, operator.eq, operator.ne,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow, torch.tanh, torch.sigmoid, torch.exp,
    torch.rsqrt, torch.sqrt, torch.clamp, torch.where, torch.sin, torch.cos,
    torch.empty_like, torch.zeros_like, torch.ones_like,  # filled in place afterwards (Wan's rotary)
    F.gelu, F.silu, F.relu, F.dropout, F.mish, F.sigmoid,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "pow", "tanh", "sigmoid", "exp", "rsqrt", "sqrt", "clamp",
    "float", "half", "bfloat16", "type", "contiguous", "clone", "sin", "cos",
    "gt", "ge", "lt", "le", "eq", "ne",
}
_RULES: dict[Any, Callable[[_Rule], NodeAxis | None]] = {
    torch._C._nn.linear: _keep_unless_last,
    F.linear: _keep_unless_last,
    F.layer_norm: _normalization, torch.layer_norm: _normalization,
    F.rms_norm: _normalization, torch.rms_norm: _normalization,  # torch.nn.RMSNorm: the qk-norm of Wan, Flux, LTX
    F.normalize: _normalize_along,
    "view": _reshape, "reshape": _reshape, torch.reshape: _reshape,
    "flatten": _reshape, torch.flatten: _reshape, "unflatten": _reshape,
    "squeeze": _reshape, "unsqueeze": _reshape, torch.unsqueeze: _reshape, torch.squeeze: _reshape,
    "permute": _permute, torch.permute: _permute, "transpose": _permute, torch.transpose: _permute,
    "chunk": _split, torch.chunk: _split, "split": _split, torch.split: _split, "unbind": _split,
    "split_with_sizes": _split, torch.split_with_sizes: _split,
    "to": _first_operand, "type_as": _first_operand,
    "repeat_interleave": _repeat_interleave, torch.repeat_interleave: _repeat_interleave,
    torch.unbind: _split,
    operator.getitem: _getitem,
    operator.setitem: _setitem,
    "mean": _reduction, torch.mean: _reduction, "sum": _reduction, torch.sum: _reduction,
    "amax": _reduction, torch.amax: _reduction,
    F.scaled_dot_product_attention: _attention,
    torch.cat: _concatenate, torch.concat: _concatenate,
    torch.stack: _stack,
    torch._C._nn.pad: _pad, F.pad: _pad,
}
_FOLLOW_DATA_DEPENDENT_RUNS = (_concatenate, _permute, _attention)
"""Rules that carry a fixed run of data-dependent length along the token axis without reading its size."""


def _rule_for(node: fx.Node) -> Callable[[_Rule], NodeAxis | None] | None:
    if node.op == "call_method" and node.target in _ELEMENTWISE_METHODS:
        return _elementwise
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return _elementwise
    return _RULES.get(node.target)
