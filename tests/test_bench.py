"""The benchmark: each baseline's invariants, the Pareto verdicts, the JSON rows and a ``--quick`` run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from conftest import assert_bar_separates
from hero_bench.harness import run_benchmark
from hero_bench.host_caches import (
    AccumulatedChangeCache,
    EasyCache,
    TeaCache,
    WorldCache,
    WorldCacheSettings,
    duca,
    easycache,
    first_block_cache,
    teacache,
    toca,
    with_stack,
    worldcache,
)
from hero_bench.methods import (
    BuildOptions,
    Method,
    fora,
    full_compute,
    hero_config_method,
    hero_hierarchy,
    hero_settings,
    taylorseer,
)
from hero_bench.models import BenchModel, latent_metrics
from hero_bench.suite import run_suite
from hero_bench.tables import matched_quality, pareto_front
from hero_world.model import WorldModel, WorldModelConfig
from hero_world.rollout import rollout
from hypothesis import given
from hypothesis import strategies as st
from models import euler
from torch import nn

from hero_compile import HeroConfig
from hero_compile.cli import main
from hero_compile.measurement import psnr_over_reference_range
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

OPTIONS = BuildOptions("aot_eager", fullgraph=False, calls_per_step=1)
SMALL_DIT = DiTConfig(hidden=32, heads=2, depth=3, frames=1, height=8, width=8)


def generate(method: Method, model: nn.Module, steps: int = 8) -> torch.Tensor:
    candidate = method.build(model, OPTIONS)
    noise = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return flow_matching_sample(candidate.denoiser, noise, steps)


@pytest.fixture(scope="module")
def dit() -> nn.Module:
    return make_dit(SMALL_DIT)


@pytest.fixture(scope="module")
def full_output(dit: nn.Module) -> torch.Tensor:
    return generate(full_compute(), dit)


@pytest.mark.parametrize("method", [fora(1), toca(1.0, 3), duca(1.0, 2), first_block_cache(0.0), worldcache(0.0, 8),
                                    teacache(0.0, 8), easycache(0.0, 8)], ids=lambda m: m.name)
def test_baseline_at_its_exact_setting_equals_full_compute(method: Method, dit: nn.Module,
                                                           full_output: torch.Tensor) -> None:
    """FORA at interval 1 computes every step; ToCa and DuCa at ratio 1.0 recompute every token (DuCa's
    aggressive steps aside: interval 2 has none); FBCache, WorldCache, TeaCache and EasyCache with threshold 0
    never skip."""
    torch.testing.assert_close(generate(method, dit), full_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("cache", "threshold", "computed"), [
    (TeaCache, 0.0, 8), (EasyCache, 0.0, 8),
    # over any change: the forced steps alone, TeaCache's first and EasyCache's first two (its rate needs two)
    (TeaCache, 10.0, 2), (EasyCache, 10.0, 3)])
def test_accumulated_change_caches_count_the_calls_that_ran_the_stack(
        cache: type[AccumulatedChangeCache], threshold: float, computed: int, dit: nn.Module) -> None:
    """The count ``schedule_check.py --peer`` reports as a share, from zero again after a reset."""
    model, stack = with_stack(dit, lambda blocks: cache(blocks, 1, OPTIONS, 8, threshold), cache.__name__)
    noise = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for _ in range(2):
            stack.reset()
            flow_matching_sample(model, noise, 8)
            assert (stack.computed_calls, stack.calls) == (computed, 8)


@pytest.fixture(scope="module")
def rotary_world_model() -> WorldModel:
    """A small world model (its blocks take rotary tables) with random weights: adaLN-Zero would start every
    block as the identity, which any cache reproduces."""
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(hidden=32, heads=2, depth=3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def world_rollout(method: Method, model: WorldModel, steps: int = 6) -> torch.Tensor:
    config = model.config
    context = torch.randn(1, config.channels, config.context_frames, config.resolution, config.resolution,
                          generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return rollout(method.build(model, OPTIONS).denoiser, context, torch.tensor([[0, 1]]), config, steps, 1.0)


@pytest.mark.parametrize("method", [toca(1.0, 3), duca(1.0, 2), first_block_cache(0.0), worldcache(0.0, 6),
                                    teacache(0.0, 6), easycache(0.0, 6)], ids=lambda m: m.name)
def test_host_side_baselines_rotate_queries_and_keys_as_the_blocks_do(method: Method,
                                                                      rotary_world_model: WorldModel) -> None:
    """At their exact settings, on blocks called as ``block(h, cond, rotary)``: each refreshed query keeps its
    own token's rotation."""
    torch.testing.assert_close(world_rollout(method, rotary_world_model),
                               world_rollout(full_compute(), rotary_world_model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [fora(3), toca(0.25, 3), duca(0.25, 3), first_block_cache(10.0),
                                    teacache(10.0, 8), easycache(10.0, 8)], ids=lambda m: m.name)
def test_baseline_at_a_fast_setting_differs_from_full_compute(method: Method, dit: nn.Module,
                                                              full_output: torch.Tensor) -> None:
    assert not torch.allclose(generate(method, dit), full_output, atol=1e-4)


def test_worldcache_at_a_fast_setting_skips_steps_yet_stays_close_to_full_compute(dit: nn.Module,
                                                                                full_output: torch.Tensor) -> None:
    output = generate(worldcache(1.0, 8, max_skips=6, warmup=0.1, chaotic=0.7), dit)
    assert not torch.allclose(output, full_output, atol=1e-4)
    # broken: its prediction off, every token held at its last computed value (measured 48.0 against 45.0 dB)
    held = generate(worldcache(1.0, 8, max_skips=6, warmup=0.1, stable=1.0, chaotic=1.0), dit)
    assert_bar_separates(psnr_over_reference_range(output, full_output), 46.5,
                         psnr_over_reference_range(held, full_output))


class LinearFeatureBlock(nn.Module):
    """A block whose residual is a fixed linear function of the conditioning, itself linear in the timestep:
    every block's feature, and so the stack's residual, is linear in t."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return h + self.lin(cond)[:, None]


class LinearFeatureModel(nn.Module):
    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(width, width)
        self.direction = nn.Parameter(torch.randn(width))
        self.blocks = nn.ModuleList(LinearFeatureBlock(width) for _ in range(depth))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        cond = (timestep / 1000.0)[:, None] * self.direction
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


@pytest.mark.parametrize("reset", [True, False])
def test_a_hero_method_kept_across_generations_learns_their_length(reset: bool, dit: nn.Module,
                                                                  full_output: torch.Tensor) -> None:
    # Interval 100: every step after warm-up is cheap, but the last one once the length is known.
    config = HeroConfig(interval=100, final_full_steps=1)
    candidate = hero_config_method("hero", "hero", config, "test", reset=reset).build(dit, OPTIONS)
    noise = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    outputs = []
    with torch.no_grad():
        for _ in range(3):
            candidate.reset()
            outputs.append(flow_matching_sample(candidate.denoiser, noise, 8))
    assert torch.equal(outputs[1], outputs[2])
    psnrs = [psnr_over_reference_range(output, full_output) for output in outputs[:2]]
    if reset:  # each generation starts afresh: the last step stays cheap
        assert torch.equal(outputs[0], outputs[1])
    else:  # measured 49.4 dB with the last step cheap, 52.3 with it full
        assert psnrs[1] > psnrs[0] + 1.5, psnrs


def test_taylorseer_order_1_is_exact_on_features_linear_in_the_timestep() -> None:
    model = LinearFeatureModel().eval()
    noise = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    candidate = taylorseer(1, 4).build(model, OPTIONS)
    forecast = euler(candidate.denoiser, noise, 12)
    torch.testing.assert_close(forecast, euler(model, noise, 12), atol=1e-4, rtol=1e-4)
    order_0 = euler(fora(4).build(model, OPTIONS).denoiser, noise, 12)
    assert not torch.allclose(order_0, euler(model, noise, 12), atol=1e-2)  # the forecast did the work


def test_worldcache_prediction_is_exact_on_features_linear_in_the_step() -> None:
    """With no stable group (those tokens are held at order 0) every token is extrapolated from its last
    velocity; on a straight path the previous velocity is the same, so the damping changes nothing."""
    model = LinearFeatureModel().eval()
    steps = 12
    settings = WorldCacheSettings(threshold=1.0, max_skips=3, warmup=0.0, stable=0.0)
    stack = WorldCache(model.blocks, 1, OPTIONS, steps, settings)
    stack.compute = Mock(wraps=stack.compute)
    h = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for step in range(steps):
            cond = (1.0 - step / steps) * model.direction.expand(2, -1)
            expected = h
            for block in model.blocks:
                expected = block(expected, cond)
            torch.testing.assert_close(stack(h, cond), expected, atol=1e-5, rtol=1e-5)
    # Full at 0-2 (three outputs give a curvature), 6 and 10 (after three predictions) and 11 (the last step).
    assert stack.compute.call_count == 6


_ROW = st.fixed_dictionaries({
    "speedup": st.floats(0.5, 5.0), "psnr_vs_full": st.floats(10.0, 60.0),
    "family": st.sampled_from(["hero", "FORA", "ToCa"]),
})


@given(st.lists(_ROW, min_size=1, max_size=8))
def test_pareto_front_members_are_undominated_and_the_rest_dominated(raw: list[dict[str, Any]]) -> None:
    rows = [{**r, "method": f"m{i}", "identical_to_full": False} for i, r in enumerate(raw)]
    front = pareto_front(rows)
    assert front

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return (a["speedup"] >= b["speedup"] and a["psnr_vs_full"] >= b["psnr_vs_full"]
                and (a["speedup"], a["psnr_vs_full"]) != (b["speedup"], b["psnr_vs_full"]))

    for row in rows:
        assert (row["method"] in front) == (not any(dominates(o, row) for o in rows))
    for peer, hero in matched_quality(rows).items():
        peer_row = next(r for r in rows if r["method"] == peer)
        if hero is not None:
            hero_row = next(r for r in rows if r["method"] == hero)
            assert hero_row["speedup"] >= peer_row["speedup"]
            assert hero_row["psnr_vs_full"] >= peer_row["psnr_vs_full"] - 0.5


def tiny_bench() -> BenchModel:
    model = make_dit(SMALL_DIT)
    noise = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return BenchModel("tiny", "tiny DiT", model, lambda d: flow_matching_sample(d, noise, 8), SMALL_DIT.depth, 8,
                      1, latent_metrics)


REQUIRED = {"model": str, "method": str, "speedup": float, "psnr_vs_full": (float, type(None)),
            "ssim_vs_full": (float, type(None)), "flop_speedup": float, "graphs": int, "recompiles": int,
            "fullgraph_ok": bool, "graph_breaks": int, "peak_cache_mib": float, "identical_to_full": bool}


@pytest.fixture(scope="module")
def tiny_rows() -> list[dict[str, Any]]:
    # FORA N=8 reuses the first step's features for the whole generation: the broken method the bars must reject
    methods = [*hero_settings((3,)), *hero_hierarchy((3,)), fora(2), first_block_cache(0.05), toca(0.5, 3), fora(8)]
    return run_benchmark(tiny_bench(), methods, lowering="aot_eager", repeats=1, threads=1, progress=False)


def test_rows_have_the_schema_and_full_compute_is_the_reference(tiny_rows: list[dict[str, Any]]) -> None:
    assert tiny_rows[0]["method"] == "full"
    for row in tiny_rows:
        for key, kind in REQUIRED.items():
            assert isinstance(row[key], kind), (row["method"], key, row[key])
    full = tiny_rows[0]
    assert full["identical_to_full"] and full["psnr_vs_full"] is None and full["peak_cache_mib"] == 0.0
    json.dumps(tiny_rows, allow_nan=False)


def test_rows_record_compile_behaviour(tiny_rows: list[dict[str, Any]]) -> None:
    rows = {r["method"]: r for r in tiny_rows}
    for name in ("full", "hero interval=3", "hero hierarchy interval=3", "FORA N=2"):  # in-graph: one graph
        assert rows[name]["fullgraph_ok"] and rows[name]["graphs"] == 1 and rows[name]["graph_breaks"] == 0
        assert rows[name]["recompiles"] == 0
    for name in ("FBCache r=0.05", "ToCa 50% N=3"):  # host-side decisions break the graph
        assert not rows[name]["fullgraph_ok"] and "disable" in rows[name]["fullgraph_error"]
        assert rows[name]["graph_breaks"] >= 1
    # hero's cache: two history entries (order 1) of the deep output, 16 tokens x 32 features in float32
    assert rows["hero interval=3"]["flop_speedup"] > 1.5
    assert rows["hero interval=3"]["peak_cache_mib"] == 2 * 16 * 32 * 4 / 2**20
    # measured 67.1 against 51.7 dB for the broken method
    assert_bar_separates(rows["ToCa 50% N=3"]["psnr_vs_full"], 60.0, rows["FORA N=8"]["psnr_vs_full"])


def test_quick_bench_writes_table_json_and_plot(tmp_path: Path) -> None:
    assert main(["bench", "--quick", "--models", "dit", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {r["family"] for r in rows} >= {"full", "hero", "FORA", "TaylorSeer O1", "Delta-DiT", "FBCache", "ToCa",
                                           "DuCa", "WorldCache"}
    assert all(isinstance(r[key], REQUIRED[key]) for r in rows for key in REQUIRED)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "benchmarks.md").read_text()
    assert "## dit" in table and "Pareto front" in table and "hero-compile bench --quick" in table


def test_unknown_bench_model_is_an_error_naming_the_choices(tmp_path: Path) -> None:
    """The library call checks the names too (the command line rejects them earlier: tests/test_cli.py)."""
    with pytest.raises(ValueError, match=r"unknown benchmark model.*'dit', 'world'"):
        run_suite(["sdxl"], tmp_path)

