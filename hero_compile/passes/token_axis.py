"""Token-axis analysis: which dimension of every value inside a block indexes the tokens.

Starting from the block's token stream input, each op maps the token axis of its inputs to the token axis of
its output (views and reshapes by matching prefix products of the shapes, permutes by their permutation,
elementwise ops by broadcasting alignment, ...). Values with no token axis (adaLN modulation, weights) are
shared by all tokens. External inputs that broadcast against the token axis (rotary tables, positional
embeddings) carry tokens too and are recorded so the refresh rewrite can gather them. The analysis never
infers an axis from a size: a token count equal to head_dim, hidden size or frame count is handled alike.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from hero_compile.passes.discover_blocks import Block, flat_args, nodes_by_name
from hero_compile.passes.errors import RewriteUnsupported


@dataclass
class TokenAxisMap:
    """Token axes of one block. Node names refer to the analysed graph."""

    token_count: int
    axes: dict[str, int] = field(default_factory=dict)
    """Block nodes whose value has a token axis, and that axis (tuple values: the axis of every element)."""
    token_inputs: dict[str, int] = field(default_factory=dict)
    """External inputs read along the token axis (the stream input, rotary tables), and their axis."""
    resized_views: dict[str, int] = field(default_factory=dict)
    """``view``/``reshape`` nodes and the position of the token dimension among their size arguments."""
    attention: list[str] = field(default_factory=list)
    """Fused attention nodes: queries follow the tokens, keys and values come from all tokens."""


def analyze_token_axis(gm: fx.GraphModule, block: Block, stream_input: str) -> TokenAxisMap:
    """The token axes inside ``block`` whose tokens enter through ``stream_input``.

    The stream input's token axis is dimension 1 of a ``(batch, tokens, ...)`` tensor (0 without batch);
    fused attention must then see it as its sequence axis, else the block is rejected. Raises
    :class:`RewriteUnsupported` naming the node and op where the token axis cannot be followed.
    """
    nodes = nodes_by_name(gm.graph)
    start = _tensor(nodes[stream_input])
    axis = 1 if start.dim() >= 3 else 0
    result = TokenAxisMap(token_count=int(start.shape[axis]), token_inputs={stream_input: axis})
    inside = set(block.nodes)
    for name in block.nodes:
        node = nodes[name]
        out_axis = _Rule(node, result, inside).output_axis()
        if out_axis is not None:
            result.axes[name] = out_axis
    return result


class _Rule:
    """Maps the token axis through one node."""

    def __init__(self, node: fx.Node, analysis: TokenAxisMap, inside: set[str]) -> None:
        self.node = node
        self.analysis = analysis
        self.inside = inside

    def axis_of(self, value: Any) -> int | None:
        if not isinstance(value, fx.Node):
            return None
        if value.name in self.inside:
            return self.analysis.axes.get(value.name)
        return self.analysis.token_inputs.get(value.name)

    def reject(self, why: str) -> RewriteUnsupported:
        return RewriteUnsupported(f"token axis lost at node {self.node.name!r} ({_op_name(self.node)}): {why}")

    def output_axis(self) -> int | None:
        node = self.node
        rule = _rule_for(node)
        token_args = [a for a in flat_args(node) if self.axis_of(a) is not None]
        if rule is _elementwise or rule is _concatenate:
            return rule(self)
        if not token_args:
            return None
        if rule is None:
            raise self.reject("op not understood by the token-axis analysis")
        return rule(self)


def _tensor(node: fx.Node) -> torch.Tensor:
    value = node.meta.get("example_value")
    if not isinstance(value, torch.Tensor):
        raise RewriteUnsupported(f"node {node.name!r} has no tensor example value")
    return value


def _positional(node: fx.Node) -> Any:
    # fx types arguments as a wide union; the rules check what they rely on.
    return node.args


def _keywords(node: fx.Node) -> Any:
    return node.kwargs


def _op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _normalize(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _elementwise(rule: _Rule) -> int | None:
    """Broadcasting: tensors are right-aligned; an operand with a size > 1 at the token position has tokens."""
    node = rule.node
    out = node.meta.get("example_value")
    if not isinstance(out, torch.Tensor):
        return None
    rank = out.dim()
    aligned = {
        _normalize(a, v.dim()) + rank - v.dim()
        for a, v in ((rule.axis_of(arg), arg.meta.get("example_value")) for arg in flat_args(node))
        if a is not None and isinstance(v, torch.Tensor)
    }
    if not aligned:
        return None
    if len(aligned) > 1:
        raise rule.reject(f"operands disagree on the token axis {sorted(aligned)}")
    axis = aligned.pop()
    for arg in flat_args(node):
        value = arg.meta.get("example_value")
        if rule.axis_of(arg) is not None or not isinstance(value, torch.Tensor):
            continue
        dim = axis - (rank - value.dim())
        if dim < 0 or value.shape[dim] == 1:
            continue
        if arg.name in rule.inside:
            raise rule.reject(f"operand {arg.name!r} has tokens but is computed from no token input")
        _record_token_input(rule, arg, dim)
    return axis


def _record_token_input(rule: _Rule, arg: fx.Node, dim: int) -> None:
    known = rule.analysis.token_inputs.get(arg.name)
    if known is not None and known != dim:
        raise rule.reject(f"input {arg.name!r} is read with tokens along dims {known} and {dim}")
    if arg.meta["example_value"].shape[dim] != rule.analysis.token_count:
        raise rule.reject(f"input {arg.name!r} broadcasts against the tokens with another length")
    rule.analysis.token_inputs[arg.name] = dim


def _concatenate(rule: _Rule) -> int | None:
    tensors, dim = _args(rule.node, ("tensors", "dim"), (None, 0))
    rank = rule.node.meta["example_value"].dim()
    axes = {rule.axis_of(t) for t in tensors} - {None}
    if not axes:
        return None
    if len(axes) > 1:
        raise rule.reject("concatenated tensors disagree on the token axis")
    axis = axes.pop()
    assert axis is not None
    if _normalize(dim, rank) == axis:
        raise rule.reject("concatenation along the token axis (joint text+video attention is not refreshed yet)")
    for tensor in tensors:
        if rule.axis_of(tensor) is None:
            if tensor.name in rule.inside:
                raise rule.reject(f"operand {tensor.name!r} has tokens but is computed from no token input")
            _record_token_input(rule, tensor, axis)
    return axis


def _keep_unless_last(rule: _Rule) -> int | None:
    """Linear layers mix the last dimension only."""
    axis = rule.axis_of(_positional(rule.node)[0])
    if axis is None or axis == _positional(rule.node)[0].meta["example_value"].dim() - 1:
        raise rule.reject("the token axis is the contracted dimension or not on the first operand")
    return axis


def _normalization(rule: _Rule) -> int | None:
    (x, shape) = _args(rule.node, ("input", "normalized_shape"), (None, None))
    axis = rule.axis_of(x)
    if axis is None or axis >= x.meta["example_value"].dim() - len(shape):
        raise rule.reject("normalization over the token axis")
    return axis


def _reshape(rule: _Rule) -> int | None:
    """The token dimension must survive as a dimension of its own: equal prefix products before it."""
    source = _positional(rule.node)[0]
    axis = rule.axis_of(source)
    assert axis is not None
    in_shape = list(source.meta["example_value"].shape)
    out_shape = list(rule.node.meta["example_value"].shape)
    before = _product(in_shape[:axis])
    for j in range(len(out_shape)):
        if _product(out_shape[:j]) == before and out_shape[j] == in_shape[axis]:
            if rule.node.target in ("view", "reshape", torch.reshape):
                rule.analysis.resized_views[rule.node.name] = j
            return j
    raise rule.reject(f"reshape {in_shape} -> {out_shape} merges or splits the token axis")


def _product(sizes: Sequence[int]) -> int:
    result = 1
    for size in sizes:
        result *= int(size)
    return result


def _permute(rule: _Rule) -> int | None:
    node = rule.node
    source = _positional(node)[0]
    axis = rule.axis_of(source)
    assert axis is not None
    rank = source.meta["example_value"].dim()
    if node.target in ("transpose", torch.transpose):
        d0, d1 = (_normalize(int(d), rank) for d in _positional(node)[1:3])
        return d1 if axis == d0 else d0 if axis == d1 else axis
    args = _positional(node)
    dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
    if not dims:
        dims = _keywords(node)["dims"]
    return [_normalize(int(d), rank) for d in dims].index(axis)


def _split(rule: _Rule) -> int | None:
    """chunk/split/unbind along another dimension: every piece keeps the token axis."""
    node = rule.node
    source = _positional(node)[0]
    axis = rule.axis_of(source)
    assert axis is not None
    rank = source.meta["example_value"].dim()
    default_dim = 0
    dim = _keywords(node).get("dim", _positional(node)[2] if len(_positional(node)) > 2 else default_dim)
    if node.target in ("unbind", torch.unbind):
        dim = _keywords(node).get("dim", _positional(node)[1] if len(_positional(node)) > 1 else 0)
    dim = _normalize(int(dim), rank)
    if dim == axis:
        raise rule.reject("split along the token axis")
    if node.target in ("unbind", torch.unbind) and dim < axis:
        return axis - 1
    return axis


def _getitem(rule: _Rule) -> int | None:
    source, index = _positional(rule.node)
    axis = rule.axis_of(source)
    assert axis is not None
    if isinstance(source.meta["example_value"], (tuple, list)):
        return axis
    rank = source.meta["example_value"].dim()
    index = index if isinstance(index, tuple) else (index,)
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    out_dim, in_dim = 0, 0
    for i in index:
        if i is Ellipsis:
            skip = rank - consumed
            if in_dim <= axis < in_dim + skip:
                return out_dim + axis - in_dim
            in_dim, out_dim = in_dim + skip, out_dim + skip
        elif i is None:
            out_dim += 1
        elif in_dim == axis:
            if isinstance(i, slice) and i == slice(None):
                return out_dim
            raise rule.reject("indexing into the token axis")
        else:
            in_dim += 1
            out_dim += 0 if isinstance(i, int) else 1
    return out_dim + axis - in_dim


def _reduction(rule: _Rule) -> int | None:
    node = rule.node
    source = _positional(node)[0]
    axis = rule.axis_of(source)
    assert axis is not None
    rank = source.meta["example_value"].dim()
    dims = _keywords(node).get("dim", _positional(node)[1] if len(_positional(node)) > 1 else None)
    if dims is None:
        raise rule.reject("reduction over every dimension, the token axis included")
    dims = [_normalize(int(d), rank) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if axis in dims:
        raise rule.reject("reduction over the token axis")
    keepdim = _keywords(node).get("keepdim", _positional(node)[2] if len(_positional(node)) > 2 else False)
    return axis if keepdim else axis - sum(d < axis for d in dims)


def _attention(rule: _Rule) -> int | None:
    node = rule.node
    query, key, value = _positional(node)[:3]
    if _keywords(node).get("attn_mask") is not None or len(_positional(node)) > 3:
        raise rule.reject("attention with a mask")
    if _keywords(node).get("is_causal"):
        raise rule.reject("causal attention")
    for role, tensor in (("query", query), ("key", key), ("value", value)):
        expected = tensor.meta["example_value"].dim() - 2
        if rule.axis_of(tensor) != expected:
            raise rule.reject(f"the {role} sequence axis is not the token axis of the block input")
    rule.analysis.attention.append(node.name)
    return node.meta["example_value"].dim() - 2


def _args(node: fx.Node, names: Sequence[str], defaults: Sequence[Any]) -> list[Any]:
    return [
        _positional(node)[i] if i < len(_positional(node)) else _keywords(node).get(name, default)
        for i, (name, default) in enumerate(zip(names, defaults))
    ]


_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow, torch.tanh, torch.sigmoid, torch.exp,
    torch.rsqrt, torch.sqrt, torch.clamp, torch.where, torch.sin, torch.cos,
    F.gelu, F.silu, F.relu, F.dropout, F.mish, torch.nn.functional.sigmoid,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "pow", "tanh", "sigmoid", "exp", "rsqrt", "sqrt", "clamp",
    "float", "half", "bfloat16", "to", "type_as", "type", "contiguous", "clone", "sin", "cos",
}
_RULES: dict[Any, Callable[[_Rule], int | None]] = {
    torch._C._nn.linear: _keep_unless_last,
    F.linear: _keep_unless_last,
    F.layer_norm: _normalization,
    F.rms_norm: _normalization,
    "view": _reshape, "reshape": _reshape, torch.reshape: _reshape,
    "flatten": _reshape, torch.flatten: _reshape, "unflatten": _reshape,
    "squeeze": _reshape, "unsqueeze": _reshape, torch.unsqueeze: _reshape, torch.squeeze: _reshape,
    "permute": _permute, torch.permute: _permute, "transpose": _permute, torch.transpose: _permute,
    "chunk": _split, torch.chunk: _split, "split": _split, torch.split: _split, "unbind": _split,
    torch.unbind: _split,
    operator.getitem: _getitem,
    "mean": _reduction, torch.mean: _reduction, "sum": _reduction, torch.sum: _reduction,
    "amax": _reduction, torch.amax: _reduction,
    F.scaled_dot_product_attention: _attention,
    torch.cat: _concatenate, torch.concat: _concatenate,
}


def _rule_for(node: fx.Node) -> Callable[[_Rule], int | None] | None:
    if node.op == "call_method" and node.target in _ELEMENTWISE_METHODS:
        return _elementwise
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return _elementwise
    return _RULES.get(node.target)
