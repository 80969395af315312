"""What the compile pipeline hands to the runtime: the compiled variants of one graph and how to call them.

Calling conventions (the graphs are built in ``hero_compile.passes``):
- ``measuring(*inputs, *previous_block_outputs) -> (*outputs, *block_outputs, variability_sums)``: while the
  split is being measured (``hero_compile.passes.measure_variability``);
- ``full(*inputs) -> (*outputs, *deep_features, *refresh_caches, *stack_inputs)``: one feature per deep stream,
  what the refreshed shallow blocks cache (each block's output, and its keys and values with
  ``kv_source="cache"``) and, with the adaptive schedule, the block stack's input streams;
- ``cheap(*inputs, [coefficients, *history], [refresh_indices, *refresh_caches], [*full_stack_inputs])
  -> (*outputs, *refresh_caches, [distance])``: the first group when there is a deep segment (``history_length``
  features per stream, most recent first), the second when shallow blocks are refreshed, the third with the
  adaptive schedule (the stack's input at the last full step; ``distance`` is how far it moved since,
  ``passes.estimate_change``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from hero_compile.token_selection import TokenSelector

CompiledFn = Callable[..., Any]


@dataclass(frozen=True)
class InputRoles:
    """Which graph inputs the runtime reads."""

    timestep_index: int
    activation_indices: tuple[int, ...]
    """Inputs that are not parameters: their shapes decide whether cached features still fit."""
    weight_indices: tuple[int, ...]
    """Parameters and buffers: calls with other weights (another instance, another expert) get their own state."""


@dataclass(frozen=True)
class VariantSpec:
    """What the runtime needs to know of the compiled variants."""

    num_outputs: int
    num_streams: int
    history_length: int
    num_refresh_caches: int
    num_stack_inputs: int = 0
    """With the adaptive schedule: the stack's input streams the full variant returns last and the cheap one
    takes back last, to measure their change."""


@contextlib.contextmanager
def compile_session() -> Iterator[None]:
    """What Dynamo holds while it compiles, held while hero compiles a variant during a call: its lock (two
    compiles at once corrupt each other) and its compiling flag (another thread calling compiled code while a
    variant is traced would otherwise take it for FX tracing the compiled function, and fail)."""
    with torch._dynamo.convert_frame.compile_lock, _compiling_flag():
        yield


@contextlib.contextmanager
def _compiling_flag() -> Iterator[None]:
    """``torch.compiler``'s compiling flag set, as Dynamo sets it. Recent torch has a context for it; torch 2.11 (the
    CUDA build the GPU benchmark ran on) has only the module's flag."""
    session = getattr(torch.compiler, "_compile_session_context", None)
    if session is not None:
        with session():
            yield
        return
    old = getattr(torch.compiler, "_is_compiling_flag", False)
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = old


class LazyVariant:
    """A graph variant compiled on first use, for the real inputs it is first called with, outside Dynamo's
    tracing context (it is compiled while Dynamo's compiled code runs, not while Dynamo traces).

    It is specialized to those inputs' sizes, so the caller names the sizes: a graph with dynamic shapes is
    compiled once per distinct ``sizes``.
    """

    def __init__(self, graph: fx.GraphModule, compile: Callable[[fx.GraphModule, list[Any]], CompiledFn]) -> None:
        self.graph = graph
        """The variant's graph, as handed to the lowering."""
        self.compile = compile
        self.by_sizes: dict[Any, CompiledFn] = {}

    def for_inputs(self, inputs: Sequence[Any], sizes: Any) -> CompiledFn:
        compiled = self.by_sizes.get(sizes)
        if compiled is None:
            with compile_session(), torch._guards.tracing(None):
                compiled = self.by_sizes.get(sizes) or self.compile(self.graph, list(inputs))
                self.by_sizes[sizes] = compiled
        return compiled


@dataclass
class Variants:
    """The full and cheap variants of one split."""

    spec: VariantSpec
    full: CompiledFn
    cheap: LazyVariant | None
    """``None`` when the split leaves nothing to skip (no deep segment, no refreshed block)."""
    selector: TokenSelector | None
    """Chooses the refreshed tokens of each cheap step; ``None`` when no block is refreshed."""
