"""Compile a graph variant with the configured lowering."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from hero_compile.config import Lowering

CompiledFn = Callable[..., Any]


def lower(
    gm: fx.GraphModule, example_inputs: Sequence[Any], lowering: Lowering, inductor_options: dict[str, Any]
) -> CompiledFn:
    """Compile ``gm`` for ``example_inputs``: Inductor with ``inductor_options``, AOT-eager, or plain FX."""
    if lowering == "inductor":
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(gm, list(example_inputs), config_patches=dict(inductor_options))
        assert callable(compiled)
        return compiled
    if lowering == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, list(example_inputs))
    return gm.forward
