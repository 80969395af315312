"""Compile a graph variant with the configured lowering."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._guards import TracingContext, detect_fake_mode, tracing
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv, free_unbacked_symbols

from hero_compile.config import Lowering
from hero_compile.passes.graph_surgery import copy_graph, new_graph_module

CompiledFn = Callable[..., Any]


def lower(
    gm: fx.GraphModule, example_inputs: Sequence[Any], lowering: Lowering, inductor_options: dict[str, Any]
) -> CompiledFn:
    """Compile ``gm`` for ``example_inputs``: Inductor with ``inductor_options``, AOT-eager, or plain FX.

    A variant compiled later for real inputs (outside Dynamo's tracing) is traced with fake copies of them and a
    shape environment of its own: Inductor's caches need one (without, a warm process compiles it again), and
    sizes that ``nonzero()`` packs values to are symbols in it.
    """
    if detect_fake_mode(example_inputs) is not None:
        return _lower(gm, example_inputs, lowering, inductor_options)
    fake_mode = FakeTensorMode(shape_env=ShapeEnv())
    fakes = [fake_mode.from_tensor(x, static_shapes=True) if isinstance(x, torch.Tensor) else x
             for x in example_inputs]
    if _has_data_dependent_sizes(gm):
        gm = _without_unbacked_bindings(gm)
    with tracing(TracingContext(fake_mode)):
        return _lower(gm, fakes, lowering, inductor_options)


def _lower(
    gm: fx.GraphModule, example_inputs: Sequence[Any], lowering: Lowering, inductor_options: dict[str, Any]
) -> CompiledFn:
    if lowering == "inductor":
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(gm, list(example_inputs), config_patches=dict(inductor_options))
        assert callable(compiled)
        return compiled
    if lowering == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, list(example_inputs))
    return gm.forward


def _without_unbacked_bindings(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` that no longer ties its data-dependent sizes to Dynamo's symbols: tracing it in a new
    shape environment then names them afresh instead of renaming them to symbols that environment lacks."""
    graph, nodes = copy_graph(gm.graph)
    for node in nodes.values():
        node.meta.pop("unbacked_bindings", None)
    return new_graph_module(gm, graph)


def _has_data_dependent_sizes(gm: fx.GraphModule) -> bool:
    return any(free_unbacked_symbols(node.meta.get("example_value")) for node in gm.graph.nodes)
