"""Which inputs of a Dynamo graph the runtime reads: the timestep, and the activations (not parameters)."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch._dynamo.source import DictGetItemSource, GetItemSource, LocalSource, Source

from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.variants import InputRoles

_TIMESTEP_NAME_HINTS = ("timestep", "time", "sigma")


def find_input_roles(gm: fx.GraphModule) -> InputRoles:
    """The timestep input and the activation inputs of ``gm``; raises :class:`RewriteUnsupported` without a
    timestep."""
    return InputRoles(_timestep_input(gm), tuple(_activation_inputs(gm)))


def placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return list(gm.graph.find_nodes(op="placeholder"))


def _activation_inputs(gm: fx.GraphModule) -> list[int]:
    """Tensor inputs that are arguments of the compiled function (not parameters, buffers or globals)."""
    indices = []
    for i, node in enumerate(placeholders(gm)):
        arg = node.meta.get("grapharg")
        if arg is not None and isinstance(arg.example, torch.Tensor) and _is_argument(arg.source):
            indices.append(i)
    return indices


def _is_argument(source: Source) -> bool:
    """Whether ``source`` reads a function argument, directly or as an item of one: ``L['x']``, or
    ``L['kwargs']['x']`` under a ``**kwargs`` wrapper as diffusers' models have. Attributes (parameters and
    buffers of ``L['self']``) and globals are not arguments."""
    while isinstance(source, (DictGetItemSource, GetItemSource)):
        source = source.base
    return isinstance(source, LocalSource) and source.local_name != "self"


def _timestep_input(gm: fx.GraphModule) -> int:
    """The input holding the timestep: an argument tensor with at most one dimension (named like one if several)."""
    nodes = placeholders(gm)
    candidates = [i for i in _activation_inputs(gm) if nodes[i].meta["grapharg"].example.dim() <= 1]
    if not candidates:
        raise RewriteUnsupported("no timestep input: no tensor argument with at most one dimension")
    named = [i for i in candidates if any(h in nodes[i].name.lower() for h in _TIMESTEP_NAME_HINTS)]
    return (named or candidates)[0]
