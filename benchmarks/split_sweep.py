"""Benchmark: the automatic split against every fixed split, side by side in one process.

Run: ``python benchmarks/split_sweep.py --model dit|world [--json PATH]``. For each caching mode (``output``,
the default, and ``residual`` with token refresh, HERO's hierarchy) it times and scores ``split="auto"`` and
each fixed split, then checks issue 5's bar: no fixed split beats the automatic one by more than 5% speedup at
a PSNR within 0.2 dB, or by more than 0.2 dB at a speedup within 5%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hero_bench.speed import compare_on_dit
from hero_world.demo import compare_on_world_model

from hero_compile.config import HeroConfig

MODES = {"output": HeroConfig(), "residual + refresh": HeroConfig(cache_target="residual")}
BLOCKS = {"dit": 12, "world": 8}
SPEED_TOLERANCE, PSNR_TOLERANCE = 0.05, 0.2


def settings(blocks: int) -> dict[str, HeroConfig]:
    """Every fixed split with residual caching; with output caching the split does not change a single-stream
    model's cheap graph, so three fixed splits show it."""
    splits = {"output": [1, blocks // 2, blocks - 1], "residual + refresh": list(range(1, blocks))}
    chosen = {}
    for mode, config in MODES.items():
        chosen[f"{mode}, auto"] = config
        chosen.update({f"{mode}, split {split}": config.replace(split=split) for split in splits[mode]})
    return chosen


def beaten_by(rows: list[dict[str, Any]], mode: str) -> list[str]:
    """Fixed splits of ``mode`` that beat its automatic split beyond the tolerances."""
    auto = next(r for r in rows if r["setting"] == f"{mode}, auto")
    better = []
    for row in rows:
        if not row["setting"].startswith(f"{mode}, split"):
            continue
        speed, psnr = row["speedup"] / auto["speedup"], row["psnr"] - auto["psnr"]
        faster = speed > 1 + SPEED_TOLERANCE and psnr >= -PSNR_TOLERANCE
        closer = psnr > PSNR_TOLERANCE and speed >= 1 - SPEED_TOLERANCE
        if faster or closer:
            better.append(row["setting"])
    return better


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(BLOCKS), required=True)
    # Two repeats timed one cheap graph 13% apart on the world model, enough for a false verdict.
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chosen = settings(BLOCKS[args.model])
    if args.model == "dit":
        rows = compare_on_dit(chosen, repeats=args.repeats)
        for row in rows:
            row["psnr"] = row["psnr_vs_full"]
    else:
        result = compare_on_world_model(chosen, seeds=2, chunks=2, repeats=args.repeats)
        rows = result["rows"]
        for row in rows:
            row["psnr"] = row["psnr_hero_vs_full"]
    print("| setting | split | speedup | PSNR vs full (dB) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['split']} | {row['speedup']:.2f} | {row['psnr']:.2f} |")
    verdicts = {mode: beaten_by(rows, mode) for mode in MODES}
    for mode, better in verdicts.items():
        verdict = f"beaten by {', '.join(better)}" if better else "within tolerance of every fixed split"
        print(f"{mode}: the automatic split is {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rows": rows, "beaten_by": verdicts}, indent=2))


if __name__ == "__main__":
    main()
