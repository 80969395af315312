"""The variability profile: measured inside the graph, turned into a split, saved, reused, and reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import BAD_EXTRAPOLATION
from hypothesis import given
from hypothesis import strategies as st
from models import DualStreamTransformer, NoStackModel, euler
from PIL import Image

import hero_compile
from hero_compile import HeroBackend, HeroConfig, ProfileMismatch, VariabilityProfile
from hero_compile.cli import main as cli_main
from hero_compile.report import PLOTS, write_report
from hero_compile.schedule import is_full_step
from hero_compile.testing.dit import DiTConfig, make_dit
from hero_compile.variability import split_from_variability

# Residual caching: only there does the split change what a cheap step runs, and get measured.
AOT = HeroConfig(lowering="aot_eager", cache_target="residual")
DIT6 = DiTConfig(depth=6, hidden=32, heads=2, frames=1, height=8, width=8)


def eager_variability(model: torch.nn.Module, blocks: torch.nn.ModuleList, run: Callable[[], Any]) -> torch.Tensor:
    """``(steps - 1, blocks)``: ``||F(t) - F(t-1)|| / ||F(t)||`` from forward hooks, over all of a block's outputs."""
    outputs: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in blocks]

    def hook(index: int) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: Any, output: Any) -> None:
            outputs[index].append(tuple(output) if isinstance(output, tuple) else (output,))
        return record

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(blocks)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for step in range(1, len(outputs[0])):
        row = []
        for per_block in outputs:
            change = sum(float((a.double() - b.double()).square().sum()) for a, b in zip(per_block[step],
                                                                                          per_block[step - 1]))
            size = sum(float(a.double().square().sum()) for a in per_block[step])
            row.append((change / size) ** 0.5)
        rows.append(row)
    return torch.tensor(rows)


def profiled_generation(model: torch.nn.Module, run: Callable[[Callable[..., Any]], Any]) -> VariabilityProfile:
    backend = HeroBackend(AOT.replace(profile_steps=10**6))
    run(torch.compile(model, backend=backend, fullgraph=True))
    profile = backend.profile_so_far()
    assert profile is not None and backend.profiles() == {}, "still measuring"
    return profile


def test_fused_variability_equals_an_eager_reference_single_stream() -> None:
    model = make_dit(DIT6)
    noise = torch.randn(1, 4, 1, 8, 8)
    profile = profiled_generation(model, lambda m: euler(m, noise, 10))
    reference = eager_variability(model, model.blocks, lambda: euler(model, noise, 10))
    assert profile.steps == tuple(range(1, 10))
    torch.testing.assert_close(torch.tensor(profile.per_step, dtype=torch.float64), reference.double(),
                               rtol=2e-3, atol=1e-6)


def test_fused_variability_equals_an_eager_reference_dual_stream() -> None:
    model = DualStreamTransformer(depth=4, joint_final=True)
    x, text = torch.randn(1, 16, 4), torch.randn(1, 5, 8)
    profile = profiled_generation(model, lambda m: euler(m, x, 8, text))
    reference = eager_variability(model, model.transformer_blocks, lambda: euler(model, x, 8, text))
    torch.testing.assert_close(torch.tensor(profile.per_step, dtype=torch.float64), reference.double(),
                               rtol=2e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The split rule
# ---------------------------------------------------------------------------------------------------------------

profiles = st.lists(st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False), min_size=2, max_size=64)


@given(variability=profiles)
def test_split_is_the_leading_run_of_blocks_above_the_mean(variability: list[float]) -> None:
    split = split_from_variability(variability)
    assert 1 <= split <= len(variability) - 1
    mean = sum(variability) / len(variability) * (1 + 1e-9)
    if variability[0] <= mean:
        assert split == 1  # no fast block leads: only the first is shallow
        return
    assert all(v > mean for v in variability[:split])
    if split < len(variability) - 1:
        assert variability[split] <= mean


@given(blocks=st.integers(2, 200), level=st.floats(1e-3, 1.0))
def test_flat_profile_extrapolates_all_but_the_first_block(blocks: int, level: float) -> None:
    assert split_from_variability([level] * blocks) == 1


@given(variability=profiles.filter(lambda v: len(set(v)) > 1))
def test_sorting_fast_blocks_first_makes_them_the_shallow_prefix(variability: list[float]) -> None:
    mean = sum(variability) / len(variability) * (1 + 1e-9)
    fast = sum(v > mean for v in variability)
    expected = min(max(fast, 1), len(variability) - 1)
    assert split_from_variability(sorted(variability, reverse=True)) == expected


@pytest.mark.parametrize("bad", [[], [1.0], [1.0, float("nan")], [1.0, -0.5]])
def test_split_rejects_bad_profiles(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        split_from_variability(bad)


# ---------------------------------------------------------------------------------------------------------------
# Saving and reusing a profile
# ---------------------------------------------------------------------------------------------------------------


@given(rows=st.lists(st.lists(st.floats(0, 5, allow_nan=False), min_size=3, max_size=3), min_size=1, max_size=8))
def test_profile_round_trips_through_its_file(rows: list[list[float]], tmp_path_factory: Any) -> None:
    profile = VariabilityProfile(("a", "b", "c"), tuple(range(1, len(rows) + 1)), tuple(map(tuple, rows)))
    path = profile.save(tmp_path_factory.mktemp("profile") / "profile.json")
    loaded = VariabilityProfile.load(path)
    assert loaded == profile and loaded.split == profile.split


def test_a_measured_profile_is_saved_and_reused_without_measuring(tmp_path: Path) -> None:
    model = make_dit(DIT6)
    noise = torch.randn(1, 4, 1, 8, 8)
    measuring = HeroBackend(AOT)
    compiled = torch.compile(model, backend=measuring, fullgraph=True)
    euler(compiled, noise, 3)  # shorter than profile_steps: measured, not yet fixed
    with pytest.raises(ValueError, match="no variability profile has been measured yet"):
        measuring.save_profile(tmp_path / "early.json")
    euler(compiled, noise, 12)  # a new generation: the split is fixed on its first call
    path = hero_compile.save_profile(tmp_path / "profile.json", backend=measuring)
    saved = json.loads(path.read_text())
    assert saved["split"] == measuring.stats().graphs[0].split
    assert saved["blocks"] == measuring.stats().graphs[0].blocks

    torch._dynamo.reset()
    reusing = HeroBackend(AOT.replace(profile=path))
    euler(torch.compile(model, backend=reusing, fullgraph=True), noise, 12)
    (graph,) = reusing.stats().graphs
    assert graph.split == saved["split"] and graph.split_reason.startswith(f"read from profile {path}")
    expected_full = sum(is_full_step(s, reusing.config, None) for s in range(12))
    assert graph.full_calls == expected_full, "a loaded profile skips the measuring steps"


def test_a_profile_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    profile = VariabilityProfile(tuple(f"blocks.{i}" for i in range(6)), (1,), ((0.1,) * 6,))
    path = profile.save(tmp_path / "six_blocks.json")
    model = make_dit(DiTConfig(depth=4, hidden=32, heads=2, frames=1, height=8, width=8))
    compiled = torch.compile(model, backend=HeroBackend(AOT.replace(profile=path)), fullgraph=True)
    with pytest.raises(Exception, match=r"six_blocks\.json was measured on 6 blocks .* has 4") as caught:
        euler(compiled, torch.randn(1, 4, 1, 8, 8), 2)
    assert isinstance(getattr(caught.value, "inner_exception", caught.value), ProfileMismatch)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"blocks": ["b.0", "b.1"], "steps": [1], "per_step": [[0.1, 0.2]]},
         r"format_version is None, but .* format 1"),
        ({"format_version": 2, "blocks": ["b.0"], "steps": [1], "per_step": [[0.1]]}, r"format_version is 2"),
        ({"format_version": 1, "blocks": "b.0", "steps": [1], "per_step": [[0.1]]},
         r"field 'blocks' must be a list of str"),
        ({"format_version": 1, "blocks": ["b.0"], "steps": [1.5], "per_step": [[0.1]]},
         r"field 'steps' must be a list of int"),
        ({"format_version": 1, "blocks": ["b.0"], "steps": [1], "per_step": [["x"]]},
         r"field 'per_step' must hold rows of finite numbers"),
        ({"format_version": 1, "blocks": ["b.0", "b.1"], "steps": [1], "per_step": [[0.1]]},
         r"needs 2 values \(one per block\)"),
        ([1, 2], r"a JSON object is expected"),
    ],
)
def test_a_bad_profile_file_names_the_file_and_the_field(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as caught:
        VariabilityProfile.load(path)
    assert str(caught.value).startswith(str(path))


def test_a_profile_that_is_not_json_or_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("split = 3")
    with pytest.raises(ValueError, match=r"notes\.txt is not a variability profile .*not JSON"):
        VariabilityProfile.load(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"is a directory"):
        VariabilityProfile.load(tmp_path)


def test_a_saved_profile_loads_back_equal(tmp_path: Path) -> None:
    profile = VariabilityProfile(("b.0", "b.1", "b.2"), (1, 2), ((0.3, 0.1, 0.2), (0.5, 0.1, 0.1)))
    assert VariabilityProfile.load(profile.save(tmp_path / "p.json")) == profile


def test_a_missing_profile_file_is_a_clear_error(tmp_path: Path) -> None:
    model = make_dit(DiTConfig(depth=2, hidden=32, heads=2, frames=1, height=8, width=8))
    compiled = torch.compile(model, backend=HeroBackend(AOT.replace(profile=tmp_path / "nope.json")))
    with pytest.raises(Exception, match=r"nope\.json does not exist"):
        euler(compiled, torch.randn(1, 4, 1, 8, 8), 2)


# ---------------------------------------------------------------------------------------------------------------
# analyze() and its report
# ---------------------------------------------------------------------------------------------------------------


def tiny_dit_target() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A ``package.module:factory`` target for ``hero-compile analyze`` (this test module is importable)."""
    return make_dit(DIT6), (torch.randn(1, 4, 1, 8, 8), torch.full((1,), 1000.0))


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis")
    code = cli_main(["analyze", "test_variability:tiny_dit_target", "--out", str(out), "--steps", "12",
                     "--repeats", "1", "--lowering", "eager"])
    assert code == 0
    return out


def test_analyze_writes_valid_plots(cli_report: Path) -> None:
    for name in PLOTS:
        with Image.open(cli_report / name) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
            image.verify()


@pytest.mark.quality_bar(*BAD_EXTRAPOLATION)
def test_analyze_json_has_the_profile_the_split_and_the_costs(cli_report: Path) -> None:
    report = json.loads((cli_report / "report.json").read_text())
    assert [b["path"] for b in report["blocks"]] == [f"blocks.{i}" for i in range(6)]
    assert all(b["refresh"] == "refreshable" for b in report["blocks"])
    profile = report["profile"]
    assert profile["steps"] == list(range(1, 12)) and len(profile["per_step"]) == 11
    assert 1 <= report["split"] <= 5
    assert [b["role"] for b in report["blocks"]] == ["shallow"] * report["split"] + ["deep"] * (6 - report["split"])
    assert report["flops_cheap_call"] < report["flops_full_call"]
    # the counted run has the defaults' output caching: it measures no split and predicts the whole stack
    assert [b["cheap_step"] for b in report["blocks"]] == ["extrapolated"] * 6
    # a generation's operations are its calls' (timings are the benchmarks' business: only their presence here)
    calls = report["full_calls"] * report["flops_full_call"] + report["cheap_calls"] * report["flops_cheap_call"]
    assert report["flops_generation_hero"] == pytest.approx(calls, rel=1e-6) and isinstance(report["speedup"], float)
    assert report["full_calls"] + report["cheap_calls"] == 12
    # measured 60.6 dB; 49.5 with extrapolation off
    assert report["psnr_vs_full"] >= 55
    # the saved profile is one HeroConfig(profile=...) accepts
    assert VariabilityProfile.load(cli_report / "profile.json").blocks == tuple(b["path"] for b in report["blocks"])
    markdown = (cli_report / "report.md").read_text()
    assert all(f"]({name})" in markdown for name in PLOTS)


def test_analyze_reports_a_model_without_blocks(tmp_path: Path) -> None:
    report = hero_compile.analyze(NoStackModel(), (torch.randn(1, 6, 4), torch.full((1,), 1000.0)), steps=2)
    assert report.fallback_reason is not None and "no block stack" in report.fallback_reason
    write_report(report, tmp_path)
    assert "Not accelerated" in (tmp_path / "report.md").read_text()
