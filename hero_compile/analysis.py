"""``hero_compile.analyze``: what HERO finds in a model and what it would gain, measured offline.

The analysis compiles the model a few times on the same inputs: once to read its graph (the blocks and each
block's token-axis verdict), once with the whole first generation profiled (the variability of every block at
every step), once with eager lowering under a FLOP counter (the cost of a full and of a cheap call, and of a
generation under the schedule), and twice for the clock (plain compilation and HERO alternated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.fx as fx

from hero_compile.backend import HeroBackend
from hero_compile.config import HeroConfig
from hero_compile.measurement import FlopCounter, alternated_medians, count_flops, psnr_over_reference_range
from hero_compile.passes.discover_blocks import Block, BlockStack, discover_blocks
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import nodes_by_name
from hero_compile.passes.plan_refresh import plan_block
from hero_compile.stats import GraphStats
from hero_compile.testing.sampling import euler_flow_matching
from hero_compile.variability import SPLIT_RULE, VariabilityProfile

Denoiser = Callable[..., Any]
Sampler = Callable[[Denoiser], Any]
"""Runs one generation with the denoiser it is given and returns its result (a tensor for the quality figure)."""


@dataclass
class BlockReport:
    path: str
    refresh: str
    """``"refreshable"``, or why token refresh cannot rewrite the block (it then runs in full when shallow)."""
    variability: float | None = None
    role: str | None = None
    """``"shallow"`` (before the split) or ``"deep"`` (extrapolated on cheap steps)."""
    cheap_step: str | None = None
    """What the block does on a cheap step: extrapolated, refreshed (how many tokens), skipped, or run in full."""


@dataclass
class AnalysisReport:
    """Everything :func:`analyze` found. ``to_dict`` is the JSON report; ``hero_compile.report`` renders it."""

    config: dict[str, Any]
    blocks: list[BlockReport] = field(default_factory=list)
    fallback_reason: str | None = None
    profile: VariabilityProfile | None = None
    """The variability of every block at every step of a fully profiled generation."""
    split: int | None = None
    split_reason: str | None = None
    flops_full_call: float | None = None
    flops_cheap_call: float | None = None
    flops_generation_full: float | None = None
    flops_generation_hero: float | None = None
    full_calls: int | None = None
    cheap_calls: int | None = None
    seconds_full: float | None = None
    seconds_hero: float | None = None
    psnr_vs_full: float | None = None
    lowering: str | None = None

    @property
    def flop_speedup(self) -> float | None:
        if self.flops_generation_full is None or not self.flops_generation_hero:
            return None
        return self.flops_generation_full / self.flops_generation_hero

    @property
    def speedup(self) -> float | None:
        if self.seconds_full is None or not self.seconds_hero:
            return None
        return self.seconds_full / self.seconds_hero

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["profile"] = self.profile.to_dict() if self.profile else None
        data["flop_speedup"] = self.flop_speedup
        data["speedup"] = self.speedup
        return data


def analyze(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    sampler: Sampler | None = None,
    config: HeroConfig | None = None,
    steps: int = 20,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> AnalysisReport:
    """Analyze ``model`` as HERO sees it; ``model(*example_inputs)`` is one denoiser call.

    ``sampler(denoiser)`` runs one generation; by default :func:`euler_sampler` over ``example_inputs`` with
    ``steps`` steps. ``config`` (default ``HeroConfig()``) sets the schedule and the lowering the speed is
    measured with; its ``split`` is ignored, the analysis measures it. The measured speedup is the median of
    ``repeats`` generations, plain compilation (same lowering) and HERO alternated after a warm-up.
    ``progress``, if given, is called with the name of each phase of :data:`ANALYSIS_PHASES` as it starts.
    """
    config = (config or HeroConfig()).replace(split="auto", profile=None)
    sampler = sampler or euler_sampler(example_inputs, steps)
    report = AnalysisReport(config=dataclasses.asdict(config), lowering=config.lowering)
    phase = progress or _quietly
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=16):
        phase("graph")
        gm = _capture_graph(model, example_inputs)
        try:
            stack = discover_blocks(gm)
        except RewriteUnsupported as reason:
            report.fallback_reason = str(reason)
            return report
        nodes = nodes_by_name(gm.graph)
        report.blocks = [BlockReport(block.path, _refresh_verdict(gm, stack, block, nodes)) for block in stack.blocks]

        try:
            _measure(report, model, sampler, config, repeats, phase)
        except RewriteUnsupported as reason:
            report.fallback_reason = str(reason)
    return report


ANALYSIS_PHASES = ("graph", "variability profile", "FLOPs", "wall time")
"""The phases :func:`analyze` reports to its ``progress`` callback, in order."""


def _quietly(phase: str) -> None:
    pass


def _measure(report: AnalysisReport, model: torch.nn.Module, sampler: Sampler, config: HeroConfig, repeats: int,
             phase: Callable[[str], None]) -> None:
    """The profile, the split, the FLOPs and the clock (phases 2 to 4)."""
    phase("variability profile")
    # Residual caching: with output caching a split may change nothing, and then no profile is measured.
    profiled = HeroBackend(config.replace(profile_steps=10**9, lowering="eager", cache_target="residual"))
    sampler(torch.compile(model, backend=profiled, fullgraph=True))
    report.profile = _whole_generation_profile(profiled)
    # The split a runtime with this config would fix: from the first profile_steps steps only.
    runtime_profile = _first_steps(report.profile, config.profile_steps)
    report.split = runtime_profile.split
    report.split_reason = f"profiled over steps {list(runtime_profile.steps)}: {SPLIT_RULE}"
    for index, (block, value) in enumerate(zip(report.blocks, runtime_profile.variability)):
        block.variability = value
        block.role = "shallow" if index < report.split else "deep"

    fixed = config.replace(profile=runtime_profile)
    phase("FLOPs")
    _count_flops(report, model, sampler, fixed)
    phase("wall time")
    _time(report, model, sampler, fixed, repeats)


def euler_sampler(example_inputs: Sequence[Any], steps: int) -> Sampler:
    """A flow-matching Euler sampler over ``example_inputs``: the first input is the sample, updated with the
    model's output as velocity; the last input with at most one dimension is the timestep, set to ``1000 t``
    for ``t`` from 1 to 0; the other inputs are passed unchanged."""
    timestep_index = max(
        (i for i, x in enumerate(example_inputs) if isinstance(x, torch.Tensor) and x.dim() <= 1 and i > 0),
        default=None,
    )
    if timestep_index is None:
        raise ValueError("euler_sampler needs a timestep input (a tensor with at most one dimension, after the "
                         "sample); pass a sampler for this model")

    def sample(denoiser: Denoiser) -> torch.Tensor:
        inputs = list(example_inputs)

        def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            inputs[0], inputs[timestep_index] = x, timestep
            return denoiser(*inputs)

        return euler_flow_matching(velocity, example_inputs[0], steps, timestep_like=example_inputs[timestep_index])

    return sample


def _capture_graph(model: torch.nn.Module, example_inputs: Sequence[Any]) -> fx.GraphModule:
    captured: list[fx.GraphModule] = []

    def capture(gm: fx.GraphModule, inputs: Sequence[Any]) -> Callable[..., Any]:
        captured.append(gm)
        return gm.forward

    torch.compile(model, backend=capture, fullgraph=True)(*example_inputs)
    return captured[0]


def _refresh_verdict(gm: fx.GraphModule, stack: BlockStack, block: Block, nodes: dict[str, fx.Node]) -> str:
    try:
        plan_block(gm, stack, block, nodes)
    except RewriteUnsupported as reason:
        return str(reason)
    return "refreshable"


def _whole_generation_profile(backend: HeroBackend) -> VariabilityProfile:
    """The profile of the generation ``backend`` has just measured in full."""
    profile = backend.profile_so_far()
    if profile is None:
        reason = backend.stats().graphs[0].fallback_reason if backend.stats().graphs else "nothing was compiled"
        raise RewriteUnsupported(f"the model was not accelerated: {reason}")
    return profile


def _first_steps(profile: VariabilityProfile, steps: int) -> VariabilityProfile:
    """The rows a runtime with ``profile_steps=steps`` measures."""
    rows = [(s, row) for s, row in zip(profile.steps, profile.per_step) if s < steps] or [
        (profile.steps[0], profile.per_step[0])
    ]
    return VariabilityProfile(profile.blocks, tuple(s for s, _ in rows), tuple(row for _, row in rows))


def _count_flops(report: AnalysisReport, model: torch.nn.Module, sampler: Sampler, config: HeroConfig) -> None:
    """FLOPs of a generation with full compute and with HERO (eager lowering, so every op is counted), and of
    each kind of call."""
    report.flops_generation_full = count_flops(partial(sampler, model))
    backend = HeroBackend(config.replace(lowering="eager"))
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    counter = FlopCounter()
    per_call: dict[bool, list[int]] = {True: [], False: []}

    def counted(*inputs: Any) -> Any:
        before, cheap_before = counter.total, backend.stats().cheap_calls
        result = compiled(*inputs)
        per_call[backend.stats().cheap_calls > cheap_before].append(counter.total - before)
        return result

    sampler(compiled)  # the first generation compiles; the counted one runs the steady schedule
    with counter:
        sampler(counted)
    report.flops_generation_hero = counter.total
    report.full_calls, report.cheap_calls = len(per_call[False]), len(per_call[True])
    report.flops_full_call = _mean(per_call[False])
    report.flops_cheap_call = _mean(per_call[True])
    _describe_cheap_steps(report, backend.stats().graphs[0])


def _describe_cheap_steps(report: AnalysisReport, stats: GraphStats) -> None:
    # The split of the counted run: the defaults' output caching measures none and predicts the whole stack,
    # whatever role the profile gives a block.
    split = stats.split if stats.split is not None else len(report.blocks)
    for index, block in enumerate(report.blocks):
        if index >= split:
            block.cheap_step = "extrapolated"
        elif block.path in stats.tokens_refreshed_per_cheap_step:
            block.cheap_step = f"refreshed ({stats.tokens_refreshed_per_cheap_step[block.path]} tokens)"
        else:
            block.cheap_step = stats.refresh_skipped.get(block.path, "runs in full")


def _time(report: AnalysisReport, model: torch.nn.Module, sampler: Sampler, config: HeroConfig, repeats: int) -> None:
    plain_backend = "inductor" if config.lowering == "inductor" else config.lowering
    plain = torch.compile(model, backend=plain_backend, fullgraph=True)
    hero = torch.compile(model, backend=HeroBackend(config), fullgraph=True)
    outputs: dict[str, Any] = {}

    def generate(name: str, denoiser: Denoiser) -> None:
        outputs[name] = sampler(denoiser)

    runs = {"full": partial(generate, "full", plain), "hero": partial(generate, "hero", hero)}
    for run in runs.values():
        run()  # warm-up: compilation
    medians = alternated_medians(runs, repeats)
    report.seconds_full, report.seconds_hero = medians["full"], medians["hero"]
    if isinstance(outputs["full"], torch.Tensor):
        report.psnr_vs_full = psnr_over_reference_range(outputs["hero"], outputs["full"])


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None
