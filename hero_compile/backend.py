"""The ``hero`` backend: runs the passes on Dynamo's graph, lowers the variants and hands them to a runtime."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.source import LocalSource

from hero_compile.config import HeroConfig
from hero_compile.passes.discover_blocks import discover_blocks
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.extrapolate import add_deep_cache_outputs, extrapolate_deep_segment, plan_deep_segment
from hero_compile.passes.lower import CompiledFn, lower
from hero_compile.runtime import HeroRuntime, VariantSpec
from hero_compile.schedule import resolve_split
from hero_compile.stats import GraphStats, HeroStats

log = logging.getLogger("hero_compile")

_TIMESTEP_NAME_HINTS = ("timestep", "time", "sigma")


class HeroBackend:
    """A ``torch.compile`` backend applying HERO with one :class:`HeroConfig`; it remembers what it compiled.

    ``torch.compile(..., options={...})`` may override config fields by name; other keys must be Inductor
    config keys and are passed to Inductor, as is ``mode=``.
    """

    def __init__(self, config: HeroConfig | None = None) -> None:
        self.config = config or HeroConfig()
        self._runtimes: list[HeroRuntime] = []
        self._stats = HeroStats()

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> CompiledFn:
        unknown = sorted(set(kwargs) - {"mode", "options"})
        if unknown:
            raise TypeError(f"hero backend got unexpected keyword arguments {unknown}")
        config, inductor_options = resolve_options(self.config, kwargs.get("options"), kwargs.get("mode"))
        stats = GraphStats(graph_id=len(self._stats.graphs))
        self._stats.graphs.append(stats)
        plain = partial(lower, gm, example_inputs, config.lowering, inductor_options)
        if not config.enabled:
            stats.fallback_reason = "disabled by HeroConfig.enabled=False"
            return plain()
        try:
            runtime = _build_runtime(gm, example_inputs, config, inductor_options, stats)
        except RewriteUnsupported as reason:
            log.warning("hero: graph %d is compiled without acceleration: %s", stats.graph_id, reason)
            stats.fallback_reason = str(reason)
            return plain()
        self._runtimes.append(runtime)
        return runtime

    def reset(self) -> None:
        """Start a new generation in every graph this backend compiled (caches and step counters cleared)."""
        for runtime in self._runtimes:
            runtime.reset()

    def stats(self) -> HeroStats:
        """What this backend did, per compiled graph (a live record: it keeps counting)."""
        return self._stats


def resolve_options(
    config: HeroConfig, options: dict[str, Any] | None, mode: str | None
) -> tuple[HeroConfig, dict[str, Any]]:
    """Split ``torch.compile``'s ``options`` into HeroConfig changes and Inductor config patches."""
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    options = dict(options or {})
    hero_changes = {k: options.pop(k) for k in list(options) if k in HeroConfig.field_names()}
    known_inductor = set(inductor_config.get_config_copy())
    unknown = sorted(k for k in options if k not in known_inductor)
    if unknown:
        raise ValueError(
            f"unknown torch.compile option(s) {unknown} for backend 'hero': neither a HeroConfig field "
            f"{list(HeroConfig.field_names())} nor an Inductor config key"
        )
    inductor_options = {**(list_mode_options(mode) if mode else {}), **options}
    return config.replace(**hero_changes), inductor_options


def _build_runtime(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    config: HeroConfig,
    inductor_options: dict[str, Any],
    stats: GraphStats,
) -> HeroRuntime:
    _reject_data_dependent_shapes(gm)
    timestep_index = _timestep_input(gm)
    stack = discover_blocks(gm)
    split = resolve_split(config.split, len(stack.blocks))
    stats.blocks, stats.split = stack.paths, split
    stats.timestep_input = _placeholders(gm)[timestep_index].name

    num_outputs = len(gm.graph.output_node().args[0])
    if split == len(stack.blocks):
        full_gm, compile_cheap, num_streams = gm, None, 0
    else:
        segment = plan_deep_segment(gm, stack, split, config.cache_target, config.extrapolation_order + 1)
        stats.deep_streams = [s.output for s in segment.streams]
        full_gm, num_streams = add_deep_cache_outputs(gm, segment), len(segment.streams)
        cheap_gm = extrapolate_deep_segment(gm, segment)
        compile_cheap = partial(lower, cheap_gm, lowering=config.lowering, inductor_options=inductor_options)
    spec = VariantSpec(
        num_outputs=num_outputs,
        num_streams=num_streams,
        history_length=config.extrapolation_order + 1,
        timestep_index=timestep_index,
        activation_indices=tuple(_activation_inputs(gm)),
    )
    full = lower(full_gm, example_inputs, config.lowering, inductor_options)
    return HeroRuntime(config, spec, full, compile_cheap, stats)


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return list(gm.graph.find_nodes(op="placeholder"))


def _activation_inputs(gm: fx.GraphModule) -> list[int]:
    """Tensor inputs that are arguments of the compiled function (not parameters, buffers or globals)."""
    indices = []
    for i, node in enumerate(_placeholders(gm)):
        arg = node.meta.get("grapharg")
        if arg is not None and isinstance(arg.source, LocalSource) and isinstance(arg.example, torch.Tensor):
            indices.append(i)
    return indices


def _timestep_input(gm: fx.GraphModule) -> int:
    """The input holding the timestep: an argument tensor with at most one dimension (named like one if several)."""
    placeholders = _placeholders(gm)
    candidates = [i for i in _activation_inputs(gm) if placeholders[i].meta["grapharg"].example.dim() <= 1]
    if not candidates:
        raise RewriteUnsupported("no timestep input: no tensor argument with at most one dimension")
    named = [i for i in candidates if any(h in placeholders[i].name.lower() for h in _TIMESTEP_NAME_HINTS)]
    return (named or candidates)[0]


def _reject_data_dependent_shapes(gm: fx.GraphModule) -> None:
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for node in gm.graph.nodes:
        if free_unbacked_symbols(node.meta.get("example_value")):
            raise RewriteUnsupported(f"node {node.name!r} ({node.target}) has a data-dependent shape or value")


DEFAULT_BACKEND = HeroBackend()
"""The backend registered as ``"hero"``; :func:`hero_compile.reset` and :func:`hero_compile.stats` address it."""
