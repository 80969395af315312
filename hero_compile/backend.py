"""The ``hero`` backend: runs the passes on Dynamo's graph, lowers the variants and hands them to a runtime."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from math import prod
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.source import DictGetItemSource, GetItemSource, LocalSource, Source

from hero_compile.config import HeroConfig
from hero_compile.passes.cache_outputs import add_cache_outputs
from hero_compile.passes.discover_blocks import Block, BlockStack, discover_blocks, nodes_by_name
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.extrapolate import extrapolate_deep_segment, plan_deep_segment
from hero_compile.passes.graph_surgery import live_nodes, without_dead_code
from hero_compile.passes.lower import CompiledFn, lower
from hero_compile.passes.profile import add_variability_outputs, measured_examples, zero_previous_outputs
from hero_compile.passes.refresh import BlockRefresh, plan_block_refresh, refresh_shallow_blocks
from hero_compile.passes.token_axis import analyze_token_axis
from hero_compile.passes.token_grid import find_token_grid
from hero_compile.runtime import HeroRuntime, InputRoles, LazyVariant, Profiling, Variants, VariantSpec
from hero_compile.stats import GraphStats, HeroStats
from hero_compile.token_selection import TokenSelector
from hero_compile.variability import SPLIT_RULE, VariabilityProfile, VariabilityRecorder

log = logging.getLogger("hero_compile")

_TIMESTEP_NAME_HINTS = ("timestep", "time", "sigma")


class HeroBackend:
    """A ``torch.compile`` backend applying HERO with one :class:`HeroConfig`; it remembers what it compiled.

    ``torch.compile(..., options={...})`` may override config fields by name; other keys must be Inductor
    config keys and are passed to Inductor, as is ``mode=``.
    """

    def __init__(self, config: HeroConfig | None = None) -> None:
        self.config = config or HeroConfig()
        self._runtimes: dict[int, HeroRuntime] = {}
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
            _record_fallback(stats, reason)
            return plain()
        self._runtimes[stats.graph_id] = runtime
        return runtime

    def reset(self) -> None:
        """Start a new generation in every graph this backend compiled (caches and step counters cleared)."""
        for runtime in self._runtimes.values():
            runtime.reset()

    def cache_bytes(self) -> int:
        """Memory the caches of every graph this backend compiled hold now."""
        return sum(runtime.cache_bytes() for runtime in self._runtimes.values())

    def profiles(self) -> dict[int, VariabilityProfile]:
        """The variability profile of each graph that has one (measured or loaded), by graph id."""
        return {graph_id: r.profile for graph_id, r in self._runtimes.items() if r.profile is not None}

    def save_profile(self, path: str | os.PathLike[str], graph_id: int | None = None) -> Path:
        """Write the variability profile of graph ``graph_id`` (by default the only graph with one) to ``path``,
        for ``HeroConfig(profile=path)`` to reuse without measuring it again."""
        profiles = self.profiles()
        if graph_id is None:
            if len(profiles) != 1:
                raise ValueError(
                    f"{len(profiles)} compiled graphs have a variability profile (ids {sorted(profiles)}); pass "
                    "graph_id" if profiles else "no variability profile has been measured yet: run a generation "
                    "longer than HeroConfig.profile_steps with split='auto' first"
                )
            graph_id = next(iter(profiles))
        if graph_id not in profiles:
            raise ValueError(f"graph {graph_id} has no variability profile (graphs with one: {sorted(profiles)})")
        return profiles[graph_id].save(path)

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
    timestep_index = _timestep_input(gm)
    roles = InputRoles(timestep_index, tuple(_activation_inputs(gm)))
    stats.timestep_input = _placeholders(gm)[timestep_index].name
    stack = discover_blocks(gm)
    stats.blocks = stack.paths
    stats.tail_blocks = list(stack.tail_paths)
    compile_variant = partial(lower, lowering=config.lowering, inductor_options=inductor_options)
    build = partial(_build_variants, gm, stack, config, compile_variant, stats, example_inputs)

    profile = _configured_profile(config)
    if profile is not None:
        profile.check_fits(stack.paths, source=f"profile {_describe_profile(config)}")
        stats.variability = profile.variability
    if config.split != "auto":
        stats.split_reason = "set by HeroConfig.split"
        return HeroRuntime(config, roles, stats, variants=build(int(config.split)))
    if profile is not None:
        stats.split_reason = f"read from profile {_describe_profile(config)}: {SPLIT_RULE}"
        runtime = HeroRuntime(config, roles, stats, variants=build(profile.split))
        runtime.profile = profile
        return runtime
    profiling = Profiling(
        variant=compile_variant(add_variability_outputs(gm, stack), [*example_inputs, *measured_examples(gm, stack)]),
        recorder=VariabilityRecorder(stack.paths),
        zero_previous=zero_previous_outputs(gm, stack),
        build=partial(_in_tracing_context, torch._guards.TracingContext.try_get(),
                      partial(_variants_or_plain, build, gm, example_inputs, compile_variant, stats)),
    )
    return HeroRuntime(config, roles, stats, profiling=profiling)


def _in_tracing_context(context: Any, build: Callable[[int], Variants], split: int) -> Variants:
    """``build(split)`` inside the tracing context Dynamo compiled the graph in: its fake tensors, and the
    shape environment of their symbolic sizes, are what the full variant is compiled for."""
    with torch._guards.tracing(context):
        return build(split)


def _variants_or_plain(build: Callable[[int], Variants], gm: fx.GraphModule, example_inputs: Sequence[Any],
                       compile_variant: Callable[[fx.GraphModule, Sequence[Any]], CompiledFn], stats: GraphStats,
                       split: int) -> Variants:
    """The variants of the split profiling chose or, if the graph cannot be rewritten for it, the plain graph
    alone (every step full, the reason in ``stats``)."""
    try:
        return build(split)
    except RewriteUnsupported as reason:
        _record_fallback(stats, reason)
        spec = VariantSpec(num_outputs=len(_outputs(gm)), num_streams=0, history_length=0, num_refresh_caches=0,
                           token_grid=None)
        return Variants(spec, compile_variant(gm, example_inputs), None)


def _record_fallback(stats: GraphStats, reason: RewriteUnsupported) -> None:
    log.warning("hero: graph %d is compiled without acceleration: %s", stats.graph_id, reason)
    stats.fallback_reason = str(reason)


def _configured_profile(config: HeroConfig) -> VariabilityProfile | None:
    if config.profile is None or isinstance(config.profile, VariabilityProfile):
        return config.profile
    return VariabilityProfile.load(config.profile)


def _describe_profile(config: HeroConfig) -> str:
    return "given in HeroConfig" if isinstance(config.profile, VariabilityProfile) else str(config.profile)


def _build_variants(
    gm: fx.GraphModule,
    stack: BlockStack,
    config: HeroConfig,
    compile_variant: Callable[[fx.GraphModule, Sequence[Any]], CompiledFn],
    stats: GraphStats,
    example_inputs: Sequence[Any],
    split: int,
) -> Variants:
    """The full and cheap variants for ``split``. The full one is compiled now for Dynamo's own example inputs
    (valid for every size the graph accepts); the cheap one on first use, for the sizes it is called with."""
    split = min(split, len(stack.blocks))
    stats.split = split
    segment = None
    cheap_gm = gm
    if split < len(stack.blocks):
        segment = plan_deep_segment(gm, stack, split, config.cache_target, config.extrapolation_order + 1)
        stats.deep_streams = [s.output for s in segment.streams]
        cheap_gm = extrapolate_deep_segment(gm, segment)
    shallow = _needed_on_cheap_steps(cheap_gm, stack.blocks[:split], stats) if config.token_refresh else []
    refresh, grid = _plan_refresh(gm, stack, shallow, stats)
    refresh_count = TokenSelector(grid, config.patch_size, config.refresh_ratio).size if grid else 0
    stats.tokens_refreshed_per_cheap_step = {plan.block.path: refresh_count for plan in refresh}

    cheap = None
    if segment is not None or refresh:
        if refresh:
            cheap_gm = refresh_shallow_blocks(cheap_gm, refresh, refresh_count, config.kv_source == "cache")
        cheap = LazyVariant(partial(compile_variant, without_dead_code(cheap_gm)))
    refresh_cached = [name for plan in refresh for name in plan.cached_values(config.kv_source == "cache")]
    full_gm = add_cache_outputs(gm, segment, refresh_cached)
    spec = VariantSpec(
        num_outputs=len(_outputs(gm)),
        num_streams=len(segment.streams) if segment else 0,
        history_length=config.extrapolation_order + 1,
        num_refresh_caches=len(refresh_cached),
        token_grid=grid if refresh else None,
    )
    return Variants(spec, compile_variant(full_gm, example_inputs), cheap)


def _needed_on_cheap_steps(cheap_gm: fx.GraphModule, shallow: Sequence[Block], stats: GraphStats) -> list[Block]:
    """Shallow blocks whose outputs the cheap variant still reads (with output caching, none: the deep
    segment's prediction no longer depends on them, and they are skipped on cheap steps)."""
    live = live_nodes(cheap_gm.graph)
    needed = []
    for block in shallow:
        if any(name in live for name in block.outputs):
            needed.append(block)
        else:
            stats.refresh_skipped[block.path] = "not run on cheap steps: only the extrapolated deep blocks read it"
    return needed


def plan_refresh(gm: fx.GraphModule, stack: BlockStack, block: Block, nodes: dict[str, fx.Node]) -> BlockRefresh:
    """How token refresh rewrites ``block`` (``nodes``: ``gm``'s nodes by name); raises
    :class:`RewriteUnsupported` with the reason it cannot."""
    stream = _refreshed_stream(stack.stream_inputs(block, nodes))
    return plan_block_refresh(block, analyze_token_axis(gm, block, stream.name), stream.name)


def _plan_refresh(
    gm: fx.GraphModule, stack: BlockStack, shallow: Sequence[Block], stats: GraphStats
) -> tuple[list[BlockRefresh], tuple[int, ...] | None]:
    """Refresh plans of the shallow blocks the token-axis analysis accepts (the others run in full, with the
    reason in ``stats.refresh_skipped``), and the token grid they share."""
    nodes = nodes_by_name(gm.graph)
    plans = []
    for block in shallow:
        try:
            plans.append(plan_refresh(gm, stack, block, nodes))
        except RewriteUnsupported as reason:
            stats.refresh_skipped[block.path] = str(reason)
    if not plans:
        return [], None
    first_input = _refreshed_stream(stack.stream_inputs(plans[0].block, nodes))
    grid = find_token_grid(first_input, plans[0].axes.token_inputs[first_input.name].dim)
    if prod(grid) != plans[0].axes.token_count:
        grid = (plans[0].axes.token_count,)
    return plans, grid


def _refreshed_stream(streams: Sequence[fx.Node]) -> fx.Node:
    """Of a block's token streams, the one with the most tokens (video, not text) is refreshed; the others are
    always recomputed in full."""
    return max(streams, key=lambda s: _sequence_length(s.meta["example_value"]))


def _sequence_length(value: torch.Tensor) -> int:
    return int(value.shape[1] if value.dim() >= 3 else value.shape[0])


def _outputs(gm: fx.GraphModule) -> Sequence[Any]:
    outputs = gm.graph.output_node().args[0]
    assert isinstance(outputs, (tuple, list))
    return outputs


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return list(gm.graph.find_nodes(op="placeholder"))


def _activation_inputs(gm: fx.GraphModule) -> list[int]:
    """Tensor inputs that are arguments of the compiled function (not parameters, buffers or globals)."""
    indices = []
    for i, node in enumerate(_placeholders(gm)):
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
    placeholders = _placeholders(gm)
    candidates = [i for i in _activation_inputs(gm) if placeholders[i].meta["grapharg"].example.dim() <= 1]
    if not candidates:
        raise RewriteUnsupported("no timestep input: no tensor argument with at most one dimension")
    named = [i for i in candidates if any(h in placeholders[i].name.lower() for h in _TIMESTEP_NAME_HINTS)]
    return (named or candidates)[0]


DEFAULT_BACKEND = HeroBackend()
"""The backend registered as ``"hero"``; :func:`hero_compile.reset` and :func:`hero_compile.stats` address it."""
