"""Plain records of what the backend did, read by users and tests instead of logs."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hero_compile")


@dataclass
class GraphStats:
    """What happened to one graph that Dynamo handed to the backend.

    Attributes:
        graph_id: order in which the backend received the graph (0 first).
        blocks: module paths of the block stack found, empty if none.
        tail_blocks: module paths of the blocks of the stacks that run after it (Flux's single-stream blocks
            after its dual-stream ones); they are skipped with the deep blocks on cheap steps.
        split: index of the first extrapolated (deep) block; equal to ``len(blocks)`` when nothing is deep;
            ``None`` while the variability profile that decides it is being measured.
        split_reason: how the split was chosen (configured, read from a profile file, or measured).
        variability: mean temporal variability of each block's output, when it was measured or loaded.
        deep_streams: graph values predicted on cheap steps (one per stream leaving the deep segment).
        timestep_input: the graph input the denoising step is read from.
        full_calls: denoiser calls that ran the full computation (a CFG step made of two calls counts two).
        cheap_calls: denoiser calls that ran the cheap variant.
        generations: sampling runs started (detected when the timestep goes up, or after ``reset()``).
        tokens_refreshed_per_cheap_step: per refreshed shallow block, tokens recomputed on a cheap step.
        refresh_skipped: per shallow block that runs in full on cheap steps, the reason it is not refreshed.
        fallback_reason: why the graph was compiled without acceleration, or ``None`` if it was accelerated.
        schedule_reason: why the configured schedule is not the one in use, or ``None`` if it is.
        timestep_misses: calls whose timestep, predicted from the previous generation to spare a device read,
            turned out different (the rest of that generation runs in full; see ``hero_compile.timestep_reads``).
    """

    graph_id: int
    blocks: list[str] = field(default_factory=list)
    tail_blocks: list[str] = field(default_factory=list)
    split: int | None = None
    split_reason: str | None = None
    variability: list[float] = field(default_factory=list)
    deep_streams: list[str] = field(default_factory=list)
    timestep_input: str | None = None
    full_calls: int = 0
    cheap_calls: int = 0
    generations: int = 0
    tokens_refreshed_per_cheap_step: dict[str, int] = field(default_factory=dict)
    refresh_skipped: dict[str, str] = field(default_factory=dict)
    fallback_reason: str | None = None
    schedule_reason: str | None = None
    timestep_misses: int = 0

    @property
    def accelerated(self) -> bool:
        return self.fallback_reason is None

    # The runtime writes the record through these methods only; the compile pipeline writes the plan.

    def record_fallback(self, reason: object) -> None:
        log.warning("hero: graph %d is compiled without acceleration: %s", self.graph_id, reason)
        self.fallback_reason = str(reason)

    def record_timestep_miss(self, reason: str) -> None:
        log.warning("hero: graph %d runs the rest of its generation in full: %s (call hero_compile.reset() before a "
                    "generation that departs from the previous one)", self.graph_id, reason)
        self.timestep_misses += 1

    def count_generation(self) -> None:
        self.generations += 1

    def count_call(self, cheap: bool) -> None:
        if cheap:
            self.cheap_calls += 1
        else:
            self.full_calls += 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HeroStats:
    """Every graph a backend compiled, in order."""

    graphs: list[GraphStats] = field(default_factory=list)

    @property
    def full_calls(self) -> int:
        return sum(g.full_calls for g in self.graphs)

    @property
    def cheap_calls(self) -> int:
        return sum(g.cheap_calls for g in self.graphs)

    def to_dict(self) -> dict[str, Any]:
        return {"graphs": [g.to_dict() for g in self.graphs]}
