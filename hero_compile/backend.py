"""The ``hero`` backend: its configuration and ``torch.compile`` options, and the record of what it compiled.

The work on each graph is the compile pipeline's (``hero_compile.pipeline``), imported with the first graph.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hero_compile.config import HeroConfig, unknown_names_message
from hero_compile.stats import GraphStats, HeroStats

if TYPE_CHECKING:
    import torch.fx as fx

    from hero_compile.runtime import HeroRuntime
    from hero_compile.variability import VariabilityProfile
    from hero_compile.variants import CompiledFn, Variants


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
        # The passes and Inductor are imported with the first graph, not with hero_compile.
        from hero_compile.pipeline import compile_graph
        from hero_compile.runtime import HeroRuntime

        stats = GraphStats(graph_id=len(self._stats.graphs))
        self._stats.graphs.append(stats)
        compiled = compile_graph(gm, example_inputs, config, inductor_options, stats)
        if isinstance(compiled, HeroRuntime):
            self._runtimes[stats.graph_id] = compiled
        return compiled

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

    def variants(self, graph_id: int = 0) -> Variants | None:
        """The variants graph ``graph_id`` runs (``None`` while its split is measured, or if it fell back),
        for inspection: ``variants(0).cheap.graph`` is the cheap variant's FX graph."""
        runtime = self._runtimes.get(graph_id)
        return runtime.variants if runtime is not None else None

    def profile_so_far(self, graph_id: int = 0) -> VariabilityProfile | None:
        """The profile of graph ``graph_id``, or while it is still being measured, the steps measured so far."""
        runtime = self._runtimes.get(graph_id)
        return runtime.profile_so_far() if runtime is not None else None

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
        raise ValueError(unknown_names_message("option", unknown, HeroConfig.field_names(),
                                               also_valid=", or any Inductor config key", more_valid=known_inductor))
    inductor_options = {**(list_mode_options(mode) if mode else {}), **options}
    return config.replace(**hero_changes), inductor_options


DEFAULT_BACKEND = HeroBackend()
"""The backend registered as ``"hero"``; :func:`hero_compile.reset` and :func:`hero_compile.stats` address it."""
