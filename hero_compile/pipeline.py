"""The compile pipeline: from the graph Dynamo captured to a :class:`HeroRuntime`, or to the plain graph when it
cannot be accelerated.

1. discover: the block stack and the inputs the runtime reads (``passes.discover_blocks``, ``passes.input_roles``);
2. plan: the split (configured, read from a saved profile, or measured by the ``measuring`` variant over the first
   steps), the deep segment (``passes.extrapolate``) and the refreshed shallow blocks (``passes.plan_refresh``);
3. rewrite: the ``full`` and ``cheap`` variants (``passes.cache_outputs``, ``passes.extrapolate``,
   ``passes.refresh``);
4. lower: each variant by Inductor, AOT-eager or plain FX (``hero_compile.lowering``).

``TORCH_LOGS="+hero_compile"`` prints every variant's graph as it is lowered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import free_symbols

from hero_compile.config import HeroConfig
from hero_compile.lowering import lower
from hero_compile.passes.cache_outputs import add_cache_outputs
from hero_compile.passes.discover_blocks import BlockStack, discover_blocks
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.estimate_change import add_change_estimate, stack_input_streams
from hero_compile.passes.extrapolate import extrapolate_deep_segment, plan_deep_segment
from hero_compile.passes.graph_surgery import live_nodes, runs_collectives, without_dead_code
from hero_compile.passes.input_roles import find_input_roles, placeholders
from hero_compile.passes.measure_variability import add_variability_outputs, measured_examples, zero_previous_outputs
from hero_compile.passes.plan_refresh import RefreshPlan, plan_refresh
from hero_compile.passes.refresh import refresh_shallow_blocks
from hero_compile.runtime import HeroRuntime, SplitMeasurement
from hero_compile.stats import GraphStats
from hero_compile.token_selection import TokenSelector
from hero_compile.variability import SPLIT_RULE, VariabilityProfile, VariabilityRecorder
from hero_compile.variants import CompiledFn, LazyVariant, Variants, VariantSpec

graph_log = logging.getLogger(__name__)


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], config: HeroConfig,
                  inductor_options: dict[str, Any], stats: GraphStats) -> CompiledFn:
    """What Dynamo runs for ``gm``: a runtime choosing between HERO's variants, or the plain graph lowered as
    configured (acceleration disabled, or a graph HERO cannot rewrite: the reason is in ``stats``)."""
    builder = VariantBuilder(gm, example_inputs, config, inductor_options, stats)
    if not config.enabled:
        stats.fallback_reason = "disabled by HeroConfig.enabled=False"
        return builder.plain()
    try:
        return builder.runtime()
    except RewriteUnsupported as reason:
        stats.record_fallback(reason)
        return builder.plain()


class VariantBuilder:
    """Plans, rewrites and lowers the variants of one Dynamo graph."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], config: HeroConfig,
                 inductor_options: dict[str, Any], stats: GraphStats) -> None:
        self.gm = gm
        self.example_inputs = list(example_inputs)
        self.config = config
        self.inductor_options = inductor_options
        self.stats = stats
        self.stack: BlockStack | None = None
        # Variants compiled now take Dynamo's fake example inputs, in the tracing context they belong to (their
        # shape environment); a dynamic graph's full variant built later, during a call, re-enters it.
        self.tracing_context = torch._guards.TracingContext.try_get()

    def plain(self) -> CompiledFn:
        return self.lower("plain", self.gm, self.example_inputs)

    def lower(self, name: str, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> CompiledFn:
        if graph_log.isEnabledFor(logging.DEBUG):
            graph_log.debug("hero: graph %d, %s variant:\n%s", self.stats.graph_id, name,
                            gm.print_readable(print_output=False))
        return lower(gm, example_inputs, self.config.lowering, self.inductor_options)

    def runtime(self) -> HeroRuntime:
        """Discover and plan; with a known split, the runtime starts with its variants, otherwise it first
        measures the variability profile with the ``measuring`` variant."""
        if self.config.schedule == "adaptive" and runs_collectives(self.gm.graph):
            # Each rank would measure its own token shard and read it when its copy lands: ranks could take
            # different decisions, and their collectives would no longer pair up.
            self.config = self.config.replace(schedule="fixed")
            self.stats.schedule_reason = ("the adaptive schedule decides from values each rank measures on its own "
                                          "shard under context parallelism; the fixed schedule runs instead")
        roles = find_input_roles(self.gm, self.config.timestep_input)
        self.stats.timestep_input = placeholders(self.gm)[roles.timestep_index].name
        self.stack = stack = discover_blocks(self.gm)
        self.stats.blocks, self.stats.tail_blocks = stack.paths, list(stack.tail_paths)
        profile = self._saved_profile()
        if profile is not None:
            self.stats.variability = profile.variability
        if self.config.split != "auto":
            self.stats.split_reason = "set by HeroConfig.split"
            return HeroRuntime(self.config, roles, self.stats, variants=self.build(int(self.config.split)))
        if self._split_changes_nothing():
            # Measuring would only cost the first generation its cheap steps, and make it differ from the next.
            self.stats.split_reason = ("output caching runs no shallow block on cheap steps: every split gives the "
                                       "same variants, so none is measured")
            return HeroRuntime(self.config, roles, self.stats, variants=self.build(0))
        if profile is not None:
            source = _describe_profile(self.config)
            self.stats.split_reason = f"read from profile {source}: {SPLIT_RULE}"
            return HeroRuntime(self.config, roles, self.stats, variants=self.build(profile.split), profile=profile)
        measurement = SplitMeasurement(
            variant=self.lower("measuring", add_variability_outputs(self.gm, stack),
                               [*self.example_inputs, *measured_examples(self.gm, stack)]),
            recorder=VariabilityRecorder(stack.paths),
            zero_previous=zero_previous_outputs(self.gm, stack),
            build=self.build_measured,
        )
        return HeroRuntime(self.config, roles, self.stats, measurement=measurement)

    def _split_changes_nothing(self) -> bool:
        """Whether every split gives the same variants: with output caching, when nothing but the deep blocks
        reads the shallow blocks' outputs, a cheap step runs none of them (the postlude reads the extrapolated
        stack output) and the caches hold the stack output, wherever the split is. Checked at the largest split,
        where the most shallow outputs could be read."""
        stack = self.stack
        assert stack is not None
        if self.config.cache_target != "output" or len(stack.blocks) < 2:
            return False
        last = len(stack.blocks) - 1
        try:
            segment = plan_deep_segment(self.gm, stack, last, "output", self.config.extrapolation_order + 1)
        except RewriteUnsupported:
            return False
        alive = live_nodes(extrapolate_deep_segment(self.gm, segment).graph)
        return not any(name in alive for block in stack.blocks[:last] for name in block.nodes)

    def _saved_profile(self) -> VariabilityProfile | None:
        profile = self.config.profile
        if profile is None:
            return None
        if not isinstance(profile, VariabilityProfile):
            profile = VariabilityProfile.load(profile)
        assert self.stack is not None
        profile.check_fits(self.stack.paths, source=f"profile {_describe_profile(self.config)}")
        return profile

    def build(self, split: int, call_inputs: Sequence[Any] | None = None) -> Variants:
        """The full and cheap variants for ``split``. The full one is compiled now: for Dynamo's own example
        inputs (valid for every size the graph accepts) or, built during a call of a graph with static shapes,
        for that call's ``call_inputs``; the cheap one on first use, for the sizes it is called with."""
        gm, stack, config = self.gm, self.stack, self.config
        assert stack is not None
        split = min(split, len(stack.blocks))
        self.stats.split = split
        segment = None
        cheap_gm = gm
        if split < len(stack.blocks):
            segment = plan_deep_segment(gm, stack, split, config.cache_target, config.extrapolation_order + 1)
            self.stats.deep_streams = [s.output for s in segment.streams]
            cheap_gm = extrapolate_deep_segment(gm, segment)
        refresh = plan_refresh(gm, cheap_gm, stack, split) if config.token_refresh else RefreshPlan()
        selector = None
        if refresh.token_grid is not None:
            selector = TokenSelector(refresh.token_grid, config.patch_size, config.refresh_ratio)
        tokens = selector.size if selector else 0
        self.stats.refresh_skipped.update(refresh.skipped)
        self.stats.tokens_refreshed_per_cheap_step = {plan.block.path: tokens for plan in refresh.blocks}

        cheap = None
        stack_inputs: list[str] = []  # with the adaptive schedule and a cheap variant: what its estimate reads
        if segment is not None or refresh.blocks:
            if refresh.blocks:
                cheap_gm = refresh_shallow_blocks(cheap_gm, refresh.blocks, tokens, config.kv_source == "cache")
            if config.schedule == "adaptive":
                stack_inputs = stack_input_streams(gm, stack)
                cheap_gm = add_change_estimate(cheap_gm, stack_inputs)
            cheap = LazyVariant(without_dead_code(cheap_gm), partial(self.lower, "cheap"))
        refresh_cached = [name for plan in refresh.blocks for name in plan.cached_values(config.kv_source == "cache")]
        spec = VariantSpec(
            num_outputs=len(_outputs(gm)),
            num_streams=len(segment.streams) if segment else 0,
            history_length=config.extrapolation_order + 1,
            num_refresh_caches=len(refresh_cached),
            num_stack_inputs=len(stack_inputs),
        )
        full_gm = add_cache_outputs(gm, segment, refresh_cached, stack_inputs)
        if call_inputs is None:
            full = self.lower("full", full_gm, self.example_inputs)
        else:
            with torch._guards.tracing(None):
                full = self.lower("full", full_gm, call_inputs)
        return Variants(spec, full, cheap, selector)

    def build_measured(self, profile: VariabilityProfile, inputs: Sequence[Any]) -> Variants:
        """The variants of the split the measured ``profile`` chooses or, if the graph cannot be rewritten for
        it, the plain graph alone (every step full, the reason in ``stats``). Called during a call (``inputs``),
        so it re-enters the tracing context Dynamo compiled the graph in. With static shapes the full variant is
        compiled for the call's inputs, outside that context, as the cheap one is: Inductor's caches then serve
        it to a warm process, which they do not for a graph compiled in a context whose compile has ended."""
        self.stats.variability = profile.variability
        self.stats.split_reason = f"profiled over steps {list(profile.steps)}: {SPLIT_RULE}"
        static = not any(free_symbols(node.meta.get("example_value")) for node in placeholders(self.gm))
        with torch._guards.tracing(self.tracing_context):
            try:
                return self.build(profile.split, inputs if static else None)
            except RewriteUnsupported as reason:
                self.stats.record_fallback(reason)
                spec = VariantSpec(num_outputs=len(_outputs(self.gm)), num_streams=0, history_length=0,
                                   num_refresh_caches=0)
                return Variants(spec, self.plain(), cheap=None, selector=None)


def _describe_profile(config: HeroConfig) -> str:
    return "given in HeroConfig" if isinstance(config.profile, VariabilityProfile) else str(config.profile)


def _outputs(gm: fx.GraphModule) -> Sequence[Any]:
    outputs = gm.graph.output_node().args[0]
    assert isinstance(outputs, (tuple, list))
    return outputs
