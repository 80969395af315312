"""The step sweep's comparisons (``benchmarks/step_sweep.py``), which docs/results.md quotes: PSNR at a speed on the
line between two settings, each peer setting against the adaptive hero, and what counts as skipping nothing, on
synthetic rows; and the world models it measures. Nothing is compiled or run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from hero_bench.harness import REFERENCE
from step_sweep import (
    ADAPTIVE,
    COMPARED,
    FIXED,
    MODELS,
    against_peers,
    at_target,
    markdown,
    psnr_at_speed,
    remeasured,
)


def row(family: str, method: str, speedup: float, psnr: float | None, steps: int = 20) -> dict[str, Any]:
    return {"model": "dit", "steps": steps, "family": family, "method": method, "speedup": speedup,
            "psnr_vs_full": psnr}


HERO = [row(COMPARED, "all full (other kernels)", 1.1, 161.5), row(COMPARED, "a", 1.5, 72.0),
        row(COMPARED, "b", 2.0, 70.0), row(COMPARED, "c", 2.5, 66.0)]


def test_psnr_at_a_speed_is_on_the_line_between_the_settings_either_side() -> None:
    assert psnr_at_speed(HERO, 1.75) == pytest.approx(71.0)
    assert psnr_at_speed(HERO, 2.0) == pytest.approx(70.0)
    assert psnr_at_speed(HERO, 2.6) is None, "no setting is faster: nothing brackets it"


def test_the_table_at_the_target_gives_each_family_its_line_and_leaves_a_cell_empty_without_one() -> None:
    peer = [row("TeaCache", "TeaCache l1=0.1", 1.8, 71.0), row("TeaCache", "TeaCache l1=0.2", 3.0, 65.0),
            row("TeaCache", "TeaCache l1=0.2", 2.2, 68.0, steps=10)]
    text = markdown([*HERO, *peer], [], "sweep").replace("|  |", "| |")
    assert "| dit | TeaCache | | 70.00 |" in text, "nothing under 2x at 10 steps"
    assert f"| dit | {COMPARED} | | 70.00 |" in text, "no setting at 10 steps"


def test_a_setting_within_rounding_of_full_compute_skipped_nothing_and_is_left_out() -> None:
    """161.5 dB at 1.1x would otherwise put a point of the line near 115 dB at 1.3x."""
    assert psnr_at_speed(HERO, 1.3) is None
    peer = row("TeaCache", "TeaCache all full", 1.12, 162.0)
    assert against_peers([*HERO, peer]) == []


def test_each_peer_meets_hero_at_its_speed_between_two_settings_or_faster() -> None:
    same = row("TeaCache", "TeaCache l1=0.1", 1.52, 71.5)  # within 3 % of hero's 1.5x
    between = row("EasyCache", "EasyCache e=0.1", 2.25, 67.0)  # hero's line: 68.0 at 2.25x
    slower = row("TeaCache", "TeaCache l1=0.3", 1.2, 73.0, steps=10)
    hero_at_10 = row(COMPARED, "d", 1.6, 72.5, steps=10)
    lines = against_peers([*HERO, hero_at_10, same, between, slower])
    assert len(lines) == 3
    assert lines[0].endswith("| a: 1.50x / 72.00 | +0.50 |")
    assert lines[1].endswith("| between: 68.00 | +1.00 |")
    assert lines[2].endswith("| d: 1.60x / 72.50, faster | -0.50 |")


def test_the_table_keeps_the_setting_nearest_the_target_and_the_best_fixed_interval_near_it() -> None:
    rows = [row(ADAPTIVE, "adaptive 1", 1.8, 71.0), row(ADAPTIVE, "adaptive 2", 2.3, 69.0),
            row(FIXED, "interval 3", 2.0, 68.0), row(FIXED, "interval 4", 2.2, 69.5),
            row(FIXED, "interval 6", 3.0, 60.0)]
    chosen = {r["family"]: r["method"] for r in at_target(rows, 2.0)}
    assert chosen == {ADAPTIVE: "adaptive 1", FIXED: "interval 4"}


def test_the_eight_maze_world_model_starts_with_the_one_maze_model_and_then_differs() -> None:
    """docs/results.md reads the one-maze sweep as the first of ``world-8``'s mazes."""
    one, eight = (MODELS[name](10, torch.device("cpu")).ground_truth for name in ("world", "world-8"))
    assert one is not None and eight is not None
    assert eight.shape == (8, *one.shape[1:])
    assert torch.equal(eight[:1], one)
    assert not any(torch.equal(eight[0], eight[i]) for i in range(1, 8))


def test_a_re_measured_setting_replaces_its_row_in_place_and_full_compute_stays() -> None:
    rows = [row("full", REFERENCE, 1.0, None), *HERO, row(COMPARED, "a", 1.6, 71.0, steps=10)]
    measured = [row("full", REFERENCE, 1.0, None), row(COMPARED, "a", 1.0, None)]
    merged = remeasured(rows, measured, "sweep --only a")
    assert [(r["method"], r["steps"]) for r in merged] == [(r["method"], r["steps"]) for r in rows]
    assert merged[2] == measured[1] | {"remeasured_with": "sweep --only a"}
    assert merged[0] == rows[0] and merged[5] == rows[5], "full compute and the other step count are kept"
    assert "full compute beside them, with `sweep --only a`" in markdown(merged, [], "sweep")
