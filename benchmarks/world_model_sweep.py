"""Benchmark: hero settings on the bundled world model against plain Inductor, rollouts alternated in one process.

Run: ``python benchmarks/world_model_sweep.py [--seeds 4] [--json docs/world_model_sweep.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hero_world.demo import compare_on_world_model

from hero_compile.config import HeroConfig

RESIDUAL = HeroConfig(cache_target="residual")

SETTINGS = {
    "residual + refresh": RESIDUAL,
    "residual, no refresh": RESIDUAL.replace(token_refresh=False),
    "residual + refresh, interval 4": RESIDUAL.replace(interval=4),
    "residual + refresh, interval 5": RESIDUAL.replace(interval=5),
    "residual + refresh 0.5": RESIDUAL.replace(refresh_ratio=0.5),
    "residual + refresh, kv cache": RESIDUAL.replace(kv_source="cache"),
    "output (defaults)": HeroConfig(),
    "residual + refresh, split 2": RESIDUAL.replace(split=2),
}

COLUMNS = ("speedup", "psnr_gt_hero", "psnr_hero_vs_full", "ssim_gt_hero", "disparity_error_hero")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = compare_on_world_model(SETTINGS, seeds=args.seeds, chunks=args.chunks, steps=args.steps,
                                    repeats=args.repeats)
    common = result["common"]
    print(f"full compute: PSNR vs ground truth {common['psnr_gt_full']:.2f} dB, SSIM {common['ssim_gt_full']:.3f}, "
          f"disparity error {common['disparity_error_full']:.4f}; copy last frame {common['psnr_gt_copy_last']:.2f} dB")
    print(f"| setting | {' | '.join(COLUMNS)} |")
    print(f"|---|{'---|' * len(COLUMNS)}")
    for row in result["rows"]:
        print(f"| {row['setting']} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
    if args.json:
        args.json.write_text(json.dumps({"common": common, "rows": result["rows"]}, indent=2))


if __name__ == "__main__":
    main()
