"""Which inputs of a Dynamo graph the runtime reads: the timestep, the activations, and the weights.

The timestep is found by what the graph does with it: an argument tensor with at most one dimension that feeds a
sinusoidal embedding (``sin``, ``cos`` or ``exp`` a few ops downstream), as every diffusion transformer's does;
else one named like a timestep; or the argument the user names (``HeroConfig.timestep_input``).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch._dynamo.source import DictGetItemSource, GetItemSource, LocalSource, Source

from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.variants import InputRoles

_TIMESTEP_NAME_HINTS = ("timestep", "time", "sigma")
_SINUSOID_OPS = {"sin", "cos", "exp"}
_SINUSOID_DEPTH = 8
"""How many ops downstream of an input its sinusoidal embedding may start (scaling, casts, an outer product)."""


def find_input_roles(gm: fx.GraphModule, timestep_input: str | None = None) -> InputRoles:
    """The timestep input (the argument named ``timestep_input`` if given), the activation inputs and the
    weight inputs of ``gm``; raises :class:`RewriteUnsupported` when no input holds a timestep."""
    activations = _activation_inputs(gm)
    nodes = placeholders(gm)
    weights = tuple(i for i, node in enumerate(nodes)
                    if i not in activations and isinstance(_example(node), torch.Tensor))
    return InputRoles(_timestep_input(gm, activations, timestep_input), tuple(activations), weights)


def placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return list(gm.graph.find_nodes(op="placeholder"))


def _example(node: fx.Node) -> object:
    arg = node.meta.get("grapharg")
    return arg.example if arg is not None else None


def _activation_inputs(gm: fx.GraphModule) -> list[int]:
    """Tensor inputs that are arguments of the compiled function (not parameters, buffers or globals)."""
    indices = []
    for i, node in enumerate(placeholders(gm)):
        arg = node.meta.get("grapharg")
        if arg is not None and isinstance(arg.example, torch.Tensor) and _argument_name(arg.source) is not None:
            indices.append(i)
    return indices


def _argument_name(source: Source) -> str | None:
    """The name of the function argument ``source`` reads, directly or as an item of one: ``L['x']``, or
    ``L['kwargs']['x']`` under a ``**kwargs`` wrapper as diffusers' models have; ``None`` for attributes
    (parameters and buffers of ``L['self']``) and globals."""
    name = None
    while isinstance(source, (DictGetItemSource, GetItemSource)):
        if isinstance(source, DictGetItemSource) and isinstance(source.index, str):
            name = source.index
        source = source.base
    if not isinstance(source, LocalSource) or source.local_name == "self":
        return None
    return name or source.local_name


def _timestep_input(gm: fx.GraphModule, activations: list[int], named: str | None) -> int:
    nodes = placeholders(gm)
    if named is not None:
        names = {_argument_name(nodes[i].meta["grapharg"].source): i for i in activations}
        if named not in names:
            raise RewriteUnsupported(f"HeroConfig.timestep_input={named!r} is not a tensor argument of the "
                                     f"compiled function (its tensor arguments: {sorted(n for n in names if n)})")
        return names[named]
    candidates = [i for i in activations if _could_be_a_timestep(_example(nodes[i]))]
    embedded = [i for i in candidates if _feeds_a_sinusoid(nodes[i])]
    named_like = [i for i in candidates if any(h in nodes[i].name.lower() for h in _TIMESTEP_NAME_HINTS)]
    chosen = embedded or named_like
    if not chosen:
        raise RewriteUnsupported(
            "no timestep input: no tensor argument with at most one dimension feeds a sinusoidal embedding or is "
            "named like a timestep; name it with HeroConfig(timestep_input=...)"
        )
    return ([i for i in chosen if i in named_like] or chosen)[0]


def _could_be_a_timestep(example: object) -> bool:
    return isinstance(example, torch.Tensor) and example.dim() <= 1 and example.dtype != torch.bool


def _feeds_a_sinusoid(node: fx.Node) -> bool:
    frontier, seen = [node], {node}
    for _ in range(_SINUSOID_DEPTH):
        frontier = [user for n in frontier for user in n.users if user not in seen]
        seen.update(frontier)
        if any(_op_name(n) in _SINUSOID_OPS for n in frontier):
            return True
    return False


def _op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")
