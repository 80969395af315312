"""hero under diffusers' context parallelism (Ulysses and Ring): 2 gloo ranks on CPU, Wan and Flux.

One process group, spawned once for the module, runs every case: each rank compiles the context-parallel model
with ``backend=hero`` and ``fullgraph=True`` and samples two generations with classifier-free guidance as two
calls per step; then it runs half of the cases again in a single process, without context parallelism, for the
reference. The tests read the results. The CPU workarounds diffusers needs are in ``hero_bench.context_parallel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import assert_no_recompiles, fresh_dynamo, recompile_report
from test_diffusers_models import Case, called_with, flux, wan

from hero_compile import HeroBackend, HeroConfig
from hero_compile.passes.plan_refresh import SHARDED_TOKENS
from hero_compile.testing.sampling import euler_flow_matching

context_parallel = pytest.importorskip("hero_bench.context_parallel")

RANKS = 2
STEPS = 8
GENERATIONS = 2
GUIDANCE = 3.0


@dataclass(frozen=True)
class Setting:
    model: str
    kind: str
    """``"ulysses"`` or ``"ring"``."""
    split: int | str

    @property
    def id(self) -> str:
        return f"{self.model}-{self.kind}-split-{self.split}"


SETTINGS = [
    Setting("wan", "ulysses", 2), Setting("wan", "ring", 2), Setting("flux", "ulysses", 1), Setting("flux", "ring", 1),
    Setting("wan", "ulysses", "auto"), Setting("flux", "ring", "auto"),
]
AUTO = [s for s in SETTINGS if s.split == "auto"]


def even_flux() -> Case:
    """The test Flux with a text length the ranks can share (diffusers shards the text tokens too)."""
    case = flux()
    context: dict[str, Any] = dict(encoder_hidden_states=torch.randn(1, 6, 8), pooled_projections=torch.randn(1, 8),
                                   img_ids=torch.randn(16, 3), txt_ids=torch.randn(6, 3))
    return Case(case.model, case.sample, called_with(timestep_scale=1e-3, **context))


def build(model: str) -> Case:
    torch.manual_seed(0)
    return wan() if model == "wan" else even_flux()


def config(setting: Setting) -> HeroConfig:
    # Residual caching runs the shallow blocks on cheap steps, so the split matters.
    return HeroConfig(lowering="aot_eager", cache_target="residual", split=setting.split)


def sample(case: Case, model: torch.nn.Module) -> list[torch.Tensor]:
    """Generations with classifier-free guidance as two calls per step (unconditional: the sample twice negated
    stands for another input of the same shape)."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conditional, unconditional = case.call(model, x, t), case.call(model, -x, t)
        return unconditional + GUIDANCE * (conditional - unconditional)

    with torch.no_grad():
        return [euler_flow_matching(velocity, case.sample, STEPS) for _ in range(GENERATIONS)]


def run(setting: Setting, parallel: bool) -> dict[str, Any]:
    fresh_dynamo()
    case = build(setting.model)
    if parallel:
        first_call = lambda m: case.call(m, case.sample, torch.full((1,), 1000.0))  # noqa: E731
        context_parallel.enable_context_parallelism(case.model, setting.kind, RANKS, first_call)
        hero = HeroBackend(config(setting))
    else:  # as under context parallelism, which turns token refresh off
        hero = HeroBackend(config(setting).replace(token_refresh=False))
    outputs = sample(case, torch.compile(case.model, backend=hero, fullgraph=True))
    stats = hero.stats()
    return {"outputs": outputs, "graphs": [g.to_dict() for g in stats.graphs], "recompiles": recompile_report()}


def worker(rank: int, world_size: int) -> dict[str, Any]:
    """Every setting under context parallelism, then this rank's share of the single-process references."""
    results = {s.id: run(s, parallel=True) for s in SETTINGS}
    dist.destroy_process_group()  # the ranks now run different references: nothing may be agreed between them
    references = {s.id: run(s, parallel=False) for s in SETTINGS[rank::world_size]}
    return {"parallel": results, "single": references}


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    return context_parallel.spawn(worker, RANKS)


def reference(ranks: list[dict[str, Any]], setting: Setting) -> dict[str, Any]:
    return next(r["single"][setting.id] for r in ranks if setting.id in r["single"])


@pytest.mark.shared_compile
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.id)
def test_hero_accelerates_every_rank_in_one_graph(ranks: list[dict[str, Any]], setting: Setting) -> None:
    single = reference(ranks, setting)["graphs"][0]
    for rank in ranks:
        result = rank["parallel"][setting.id]
        assert_no_recompiles(result["recompiles"])
        (graph,) = result["graphs"]
        assert graph["fallback_reason"] is None
        assert graph["blocks"] == single["blocks"] and graph["tail_blocks"] == single["tail_blocks"]
        assert graph["cheap_calls"] > 0 and graph["generations"] == GENERATIONS
        shallow = graph["blocks"][: graph["split"]]
        assert graph["refresh_skipped"] == dict.fromkeys(shallow, SHARDED_TOKENS)


@pytest.mark.shared_compile
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.id)
def test_equals_single_process_hero(ranks: list[dict[str, Any]], setting: Setting) -> None:
    single = reference(ranks, setting)
    for rank in ranks:
        result = rank["parallel"][setting.id]
        assert result["graphs"][0]["split"] == single["graphs"][0]["split"]
        assert result["graphs"][0]["cheap_calls"] == single["graphs"][0]["cheap_calls"]
        for parallel, alone in zip(result["outputs"], single["outputs"], strict=True):
            torch.testing.assert_close(parallel, alone, rtol=0, atol=1e-4)


@pytest.mark.shared_compile
@pytest.mark.parametrize("setting", AUTO, ids=lambda s: s.id)
def test_measured_split_is_agreed_by_every_rank(ranks: list[dict[str, Any]], setting: Setting) -> None:
    graphs = [rank["parallel"][setting.id]["graphs"][0] for rank in ranks]
    assert graphs[0]["split_reason"].startswith("profiled over steps")
    assert len({g["split"] for g in graphs}) == 1
    torch.testing.assert_close(graphs[0]["variability"], graphs[1]["variability"], rtol=0, atol=0)
    torch.testing.assert_close(graphs[0]["variability"], reference(ranks, setting)["graphs"][0]["variability"])

