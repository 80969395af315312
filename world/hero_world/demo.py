"""``hero-compile demo``: roll out held-out mazes with plain Inductor and with HERO, and compare both with the
ground truth, with each other and with the copy-last-frame baseline."""

from __future__ import annotations

import dataclasses
import json
import statistics
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

import hero_compile
from hero_compile.config import HeroConfig
from hero_compile.measurement import alternated_timings
from hero_world.checkpoint import WEIGHTS_DIR, load_world_model
from hero_world.data import HELD_OUT_SEEDS
from hero_world.rollout import GUIDANCE, rollout_scenarios, scenario


def rgb(frames: torch.Tensor) -> torch.Tensor:
    """``(batch, 4, T, H, W)`` model-space frames -> ``(batch * T, 3, H, W)`` colours in [0, 1]."""
    colours = ((frames[:, :3] + 1) / 2).clamp(0, 1)
    return colours.transpose(1, 2).reshape(-1, 3, *frames.shape[-2:])


def disparity(frames: torch.Tensor) -> torch.Tensor:
    return ((frames[:, 3] + 1) / 2).clamp(0, 1)


def psnr_rgb(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(rgb(estimate), rgb(reference), data_range=1.0))


def ssim_rgb(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    value = structural_similarity_index_measure(rgb(estimate), rgb(reference), data_range=1.0)
    assert isinstance(value, torch.Tensor)
    return float(value)


def compare_on_world_model(
    hero_configs: dict[str, HeroConfig],
    seeds: int = 2,
    chunks: int = 3,
    steps: int = 30,
    guidance: float = GUIDANCE,
    repeats: int = 2,
    weights: Path = WEIGHTS_DIR,
    threads: int = 2,
) -> dict[str, Any]:
    """Rollouts of held-out mazes with plain Inductor and with each hero setting, alternated after a warm-up
    rollout (median of ``repeats``). Returns ``common`` figures (full compute, copy-last-frame), one row per
    setting, and the frames."""
    torch.set_num_threads(threads)
    model = load_world_model(weights)
    config = model.config
    scenarios = [scenario(seed, chunks, config) for seed in HELD_OUT_SEEDS[:seeds]]
    truth = torch.stack([s.frames[:, config.context_frames :] for s in scenarios])
    last_context = torch.stack([s.frames[:, config.context_frames - 1 : config.context_frames] for s in scenarios])
    backends = {name: hero_compile.backend(c) for name, c in hero_configs.items()}
    compiled = {"full": torch.compile(model, backend="inductor", fullgraph=True)}
    compiled.update({name: torch.compile(model, backend=b, fullgraph=True) for name, b in backends.items()})
    outputs: dict[str, torch.Tensor] = {}

    def generate(name: str) -> None:
        outputs[name] = rollout_scenarios(compiled[name], scenarios, config, steps, guidance)

    total = len(compiled) * (1 + repeats)
    with (
        torch._dynamo.config.patch(recompile_limit=len(compiled) + 2),  # one entry per backend
        torch.no_grad(),
        tqdm(total=total, desc="world-model rollouts", unit="rollout") as bar,
    ):
        runs = {name: partial(generate, name) for name in compiled}
        times = alternated_timings(runs, 1 + repeats, on_run=bar.update)
    seconds = {name: statistics.median(values[1:]) for name, values in times.items()}  # the first round compiles
    full = outputs["full"]
    common = {
        "seeds": list(HELD_OUT_SEEDS[:seeds]),
        "chunks": chunks,
        "steps": steps,
        "guidance": guidance,
        "threads": threads,
        "seconds_full": seconds["full"],
        "psnr_gt_full": psnr_rgb(full, truth),
        "psnr_gt_copy_last": psnr_rgb(last_context.expand_as(truth), truth),
        "ssim_gt_full": ssim_rgb(full, truth),
        "disparity_error_full": _disparity_error(full, truth),
    }
    rows = []
    for name, hero_config in hero_configs.items():
        hero, graph = outputs[name], backends[name].stats().graphs[0]
        rows.append({
            "setting": name,
            "hero_config": dataclasses.asdict(hero_config),
            "seconds_hero": seconds[name],
            "speedup": seconds["full"] / seconds[name],
            "psnr_gt_hero": psnr_rgb(hero, truth),
            "psnr_hero_vs_full": psnr_rgb(hero, full),
            "ssim_gt_hero": ssim_rgb(hero, truth),
            "ssim_hero_vs_full": ssim_rgb(hero, full),
            "disparity_error_hero": _disparity_error(hero, truth),
            "split": graph.split,
            "cheap_calls": graph.cheap_calls,
            "full_calls": graph.full_calls,
        })
    return {"common": common, "rows": rows, "outputs": {"truth": truth, **outputs}}


def _disparity_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float((disparity(estimate) - disparity(truth)).abs().mean())


def demo(hero_config: HeroConfig | None = None, **options: Any) -> dict[str, Any]:
    """The figures of ``hero-compile demo``: one hero setting (the defaults) against plain Inductor."""
    result = compare_on_world_model({"hero": hero_config or HeroConfig()}, **options)
    return {**result["common"], **result["rows"][0], "outputs": result["outputs"]}


def write_strip(result: dict[str, Any], out_dir: Path) -> Path:
    """A PNG per seed: rows ground truth / full compute / hero / |hero - full| (x4), one column per frame."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    truth, full, hero = (result["outputs"][k] for k in ("truth", "full", "hero"))
    frames = truth.shape[2]
    for index, seed in enumerate(result["seeds"]):
        rows = [rgb(x[index : index + 1]) for x in (truth, full, hero)]
        rows.append((rows[2] - rows[1]).abs().mul(4).clamp(0, 1))
        grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # (3, 4H, T*W)
        pixels = (grid.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((pixels.shape[1] * 4, pixels.shape[0] * 4), Image.Resampling.NEAREST)
        image.save(out_dir / f"rollout_seed{seed}_{frames}frames.png")
    return out_dir


FIGURES = (
    ("speedup", "speedup of hero over plain Inductor", "x"),
    ("psnr_gt_full", "PSNR vs ground truth, full compute", " dB"),
    ("psnr_gt_hero", "PSNR vs ground truth, hero", " dB"),
    ("psnr_gt_copy_last", "PSNR vs ground truth, copy last frame", " dB"),
    ("psnr_hero_vs_full", "PSNR of hero vs full compute", " dB"),
    ("ssim_gt_full", "SSIM vs ground truth, full compute", ""),
    ("ssim_gt_hero", "SSIM vs ground truth, hero", ""),
    ("disparity_error_full", "mean abs. disparity error, full compute", ""),
    ("disparity_error_hero", "mean abs. disparity error, hero", ""),
)


def report(result: dict[str, Any]) -> str:
    lines = [f"{label:>42}: {result[key]:.3f}{unit}" for key, label, unit in FIGURES]
    lines.append(f"{'hero calls (full / cheap)':>42}: {result['full_calls']} / {result['cheap_calls']}")
    return "\n".join(lines)


def save_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=2))
