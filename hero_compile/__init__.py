"""hero-compile: HERO (hierarchical extrapolation and refresh) as a ``torch.compile`` backend.

``torch.compile(model, backend="hero")`` is all most users write; :func:`backend` builds a configured one.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hero_compile.backend import DEFAULT_BACKEND, HeroBackend
from hero_compile.config import HeroConfig
from hero_compile.stats import GraphStats, HeroStats

if TYPE_CHECKING:
    from hero_compile.analysis import AnalysisReport, analyze
    from hero_compile.variability import ProfileMismatch, VariabilityProfile

__all__ = [
    "AnalysisReport", "GraphStats", "HeroBackend", "HeroConfig", "HeroStats", "ProfileMismatch",
    "VariabilityProfile", "analyze", "backend", "reset", "save_profile", "stats",
]

BACKEND_NAME = "hero"


def backend(config: HeroConfig | None = None) -> HeroBackend:
    """A HERO backend with ``config``, to pass as ``torch.compile(model, backend=...)``."""
    return HeroBackend(config)


def reset() -> None:
    """Start a new generation in every graph compiled with ``backend="hero"`` (also detected automatically)."""
    DEFAULT_BACKEND.reset()


def stats() -> HeroStats:
    """What the default ``"hero"`` backend did, per compiled graph."""
    return DEFAULT_BACKEND.stats()


def save_profile(path: str | os.PathLike[str], backend: HeroBackend | None = None, graph_id: int | None = None
                 ) -> Path:
    """Write the variability profile measured by ``backend`` (default: the ``"hero"`` backend) to ``path``;
    ``HeroConfig(profile=path)`` then reuses its split without measuring."""
    return (backend or DEFAULT_BACKEND).save_profile(path, graph_id)


def __getattr__(name: str) -> Any:
    # The offline analysis is a tool on top of the backend: imported on first use, never by the backend. The
    # profile needs torch: imported on first use, so that ``hero-compile --help`` answers without torch.
    if name in ("analyze", "AnalysisReport"):
        from hero_compile import analysis

        return getattr(analysis, name)
    if name in ("ProfileMismatch", "VariabilityProfile"):
        from hero_compile import variability

        return getattr(variability, name)
    raise AttributeError(f"module 'hero_compile' has no attribute {name!r}")


def _register_without_entry_point() -> None:
    # An installed package registers "hero" through its entry point; registering it here as well would make
    # Dynamo's look-up fail on a duplicate name. A source checkout on sys.path has no entry point.
    if any(ep.name == BACKEND_NAME for ep in entry_points(group="torch_dynamo_backends")):
        return
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if BACKEND_NAME not in _COMPILER_FNS:
        register_backend(DEFAULT_BACKEND, name=BACKEND_NAME)


_register_without_entry_point()
