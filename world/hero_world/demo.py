"""``hero-compile demo``: roll out held-out mazes with plain Inductor and with HERO, and compare both with the
ground truth, with each other and with the copy-last-frame baseline."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    import PIL.Image


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
    rollout (median of ``repeats``; the times of every repeat are kept). Returns ``common`` figures (full
    compute, copy-last-frame), one row per setting, and the frames."""
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

    # Running totals of each backend's (full, cheap) calls before every round: the last round's are one rollout's.
    call_totals: dict[str, list[tuple[int, int]]] = {name: [] for name in backends}

    def count_calls() -> None:
        for name, backend in backends.items():
            graphs = backend.stats().graphs
            call_totals[name].append((sum(g.full_calls for g in graphs), sum(g.cheap_calls for g in graphs)))

    total = len(compiled) * (1 + repeats)
    with (
        torch._dynamo.config.patch(recompile_limit=len(compiled) + 2),  # one entry per backend
        torch.no_grad(),
        tqdm(total=total, desc="world-model rollouts", unit="rollout") as bar,
    ):
        runs = {name: partial(generate, name) for name in compiled}
        times = {name: values[1:] for name, values in  # the first round compiles: not timed
                 alternated_timings(runs, 1 + repeats, on_run=bar.update, before_round=count_calls).items()}
    count_calls()
    seconds = {name: statistics.median(values) for name, values in times.items()}
    full = outputs["full"]
    common = {
        "seeds": list(HELD_OUT_SEEDS[:seeds]),
        "chunks": chunks,
        "steps": steps,
        "guidance": guidance,
        "threads": threads,
        "repeats": repeats,
        "seconds_full": seconds["full"],
        "times_full": times["full"],
        "psnr_gt_full": psnr_rgb(full, truth),
        "psnr_gt_copy_last": psnr_rgb(last_context.expand_as(truth), truth),
        "ssim_gt_full": ssim_rgb(full, truth),
        "disparity_error_full": _disparity_error(full, truth),
    }
    rows = []
    for name, hero_config in hero_configs.items():
        hero, graph = outputs[name], backends[name].stats().graphs[0]
        (full_before, cheap_before), (full_after, cheap_after) = call_totals[name][-2:]
        rows.append({
            "setting": name,
            "hero_config": dataclasses.asdict(hero_config),
            "seconds_hero": seconds[name],
            "times_hero": times[name],
            "speedup": seconds["full"] / seconds[name],
            "speedup_per_repeat": [f / h for f, h in zip(times["full"], times[name])],
            "psnr_gt_hero": psnr_rgb(hero, truth),
            "psnr_hero_vs_full": psnr_rgb(hero, full),
            "ssim_gt_hero": ssim_rgb(hero, truth),
            "ssim_hero_vs_full": ssim_rgb(hero, full),
            "disparity_error_hero": _disparity_error(hero, truth),
            "split": graph.split,
            "cheap_calls": graph.cheap_calls,
            "full_calls": graph.full_calls,
            "full_calls_per_rollout": full_after - full_before,
            "cheap_calls_per_rollout": cheap_after - cheap_before,
        })
    return {"common": common, "rows": rows, "outputs": {"truth": truth, **outputs}}


def _disparity_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float((disparity(estimate) - disparity(truth)).abs().mean())


BUSY_SPREAD = 1.3
"""Slowest over fastest repeat of one method above which the machine was busy and the speedup is uncertain."""


def demo(hero_config: HeroConfig | None = None, **options: Any) -> dict[str, Any]:
    """The figures of ``hero-compile demo``: one hero setting (the defaults) against plain Inductor, with the
    spread of the repeated timings and a warning when it says the machine was busy."""
    result = compare_on_world_model({"hero": hero_config or HeroConfig()}, **options)
    flat = {**result["common"], **result["rows"][0], "outputs": result["outputs"]}
    timing = {method: _spread(flat[f"times_{method}"]) for method in ("full", "hero")}
    busy = [method for method, summary in timing.items() if summary["max_over_min"] > BUSY_SPREAD]
    return {**flat, "timing": timing, "busy": bool(busy)}


def _spread(times: Sequence[float]) -> dict[str, float]:
    return {"min": min(times), "median": statistics.median(times), "max": max(times),
            "max_over_min": max(times) / min(times)}


ROW_LABELS = ("ground truth", "full compute", "hero", "|hero - full| x4")
"""The rows of a strip, top to bottom, and the panels of an animation, left to right."""

_PIXELS_PER_CELL = 4  # the frames are 32 x 32: enlarged to be seen
_CAPTION_PX = 14


def write_images(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per seed, a labelled PNG strip (rows :data:`ROW_LABELS`, one column per predicted frame, left to right)
    and an animated GIF that plays the frames with the four panels side by side. Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, seed in enumerate(result["seeds"]):
        rows = _rows(result, index)
        frames = len(rows[0])
        strip = _stack([_captioned(_stack(row, across=True, gap=2), label) for row, label in zip(rows, ROW_LABELS)],
                       across=False)
        strip = _captioned(strip, f"seed {seed}: {frames} predicted frames, left to right")
        written.append(out_dir / f"rollout_seed{seed}_{frames}frames.png")
        strip.save(written[-1])
        animation = [_captioned(_stack([_captioned(row[t], label) for row, label in zip(rows, ROW_LABELS)],
                                       across=True), f"seed {seed}: frame {t + 1} of {frames}")
                     for t in range(frames)]
        written.append(out_dir / f"rollout_seed{seed}.gif")
        animation[0].save(written[-1], save_all=True, append_images=animation[1:], duration=600, loop=0)
    return written


def _rows(result: dict[str, Any], index: int) -> list[list[PIL.Image.Image]]:
    """The frames of seed ``index`` as images, one list per row of :data:`ROW_LABELS`."""
    from PIL import Image

    truth, full, hero = (rgb(result["outputs"][k][index : index + 1]) for k in ("truth", "full", "hero"))
    difference = (hero - full).abs().mul(4).clamp(0, 1)
    rows = []
    for frames in (truth, full, hero, difference):
        pixels = (frames.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)  # (T, H, W, 3)
        pixels = pixels.repeat(_PIXELS_PER_CELL, axis=1).repeat(_PIXELS_PER_CELL, axis=2)
        rows.append([Image.fromarray(frame) for frame in pixels])
    return rows


def _captioned(image: PIL.Image.Image, caption: str) -> PIL.Image.Image:
    """``image`` under a line of text."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=_CAPTION_PX)
    width = max(image.width, int(ImageDraw.Draw(image).textlength(caption, font=font)) + 4)
    out = Image.new("RGB", (width, image.height + _CAPTION_PX + 6), "white")
    ImageDraw.Draw(out).text((2, 2), caption, fill="black", font=font)
    out.paste(image, (0, _CAPTION_PX + 6))
    return out


def _stack(images: Sequence[PIL.Image.Image], across: bool, gap: int = 6) -> PIL.Image.Image:
    """``images`` side by side (``across``) or one under the other, on white."""
    from PIL import Image

    width = sum(i.width for i in images) + gap * (len(images) - 1) if across else max(i.width for i in images)
    height = max(i.height for i in images) if across else sum(i.height for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), "white")
    offset = 0
    for image in images:
        out.paste(image, (offset, 0) if across else (0, offset))
        offset += (image.width if across else image.height) + gap
    return out


QUALITY = (
    ("psnr_gt_full", "PSNR vs ground truth, full compute", " dB"),
    ("psnr_gt_hero", "PSNR vs ground truth, hero", " dB"),
    ("psnr_gt_copy_last", "PSNR vs ground truth, copy last frame", " dB"),
    ("psnr_hero_vs_full", "PSNR of hero vs full compute", " dB"),
    ("ssim_gt_full", "SSIM vs ground truth, full compute", ""),
    ("ssim_gt_hero", "SSIM vs ground truth, hero", ""),
    ("disparity_error_full", "mean abs. disparity error, full compute", ""),
    ("disparity_error_hero", "mean abs. disparity error, hero", ""),
)

CALLS_MEANING = ("a full call runs every block of the denoiser and refills hero's caches; a cheap call skips the "
                 "deep blocks (with output caching, the default, every block) and extrapolates their output from "
                 "the last full calls")


def report(result: dict[str, Any]) -> str:
    """What ``hero-compile demo`` prints: settings, times with their spread, speedup, calls, quality."""
    hero = result["hero_config"]
    seeds = result["seeds"]
    lines = [
        f"settings: {len(seeds)} held-out mazes (seeds {seeds[0]}..{seeds[-1]}) rolled out as one batch, "
        f"{result['chunks']} chunks each, {result['steps']} denoising steps per chunk, guidance {result['guidance']}, "
        f"{result['threads']} threads",
        f"hero: interval {hero['interval']}, warm-up {hero['warmup_steps']} steps, {hero['final_full_steps']} final "
        f"full step(s), split {hero['split']} (in use: {result['split']}), cache {hero['cache_target']}",
        f"timing: one untimed warm-up rollout each (compiles), then {result['repeats']} repeats alternated "
        "between the two; seconds per rollout",
    ]
    for method, label in (("full", "plain Inductor"), ("hero", "hero")):
        t = result["timing"][method]
        lines.append(f"{label:>16}: min {t['min']:.2f}  median {t['median']:.2f}  max {t['max']:.2f}  "
                     f"(max/min {t['max_over_min']:.2f})")
    per_repeat = ", ".join(f"{s:.2f}x" for s in result["speedup_per_repeat"])
    lines.append(f"speedup of hero over plain Inductor: {result['speedup']:.2f}x (ratio of medians; per repeat "
                 f"{per_repeat})")
    if result["busy"]:
        lines.append(f"WARNING: a method's slowest repeat took over {BUSY_SPREAD}x its fastest: the machine was busy "
                     "and the speedup is uncertain; rerun on an idle machine, or with more --repeats")
    full, cheap = result["full_calls_per_rollout"], result["cheap_calls_per_rollout"]
    lines += [
        f"hero calls per rollout: {full} full, {cheap} cheap ({full / (full + cheap):.0%} full)",
        f"  ({CALLS_MEANING})",
        "quality of the last repeat's rollouts:",
        *(f"{label:>42}: {result[key]:.3f}{unit}" for key, label, unit in QUALITY),
    ]
    return "\n".join(lines)


def save_json(result: dict[str, Any], path: Path) -> None:
    """``result`` without the frames, the times of every repeat included."""
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=2))
