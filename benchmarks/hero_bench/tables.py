"""The benchmark's outputs: the Pareto verdicts, ``benchmarks.md``, ``benchmarks.json`` and ``pareto.png``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

MATCHED_QUALITY_DB = 0.5
"""A hero setting matches a peer's quality when its PSNR vs full compute is at most this much lower."""

HERO = "hero"


def by_model(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["model"]].append(row)
    return dict(grouped)


def _accelerated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose output differs from full compute (the others have no finite PSNR against it)."""
    return [r for r in rows if not r["identical_to_full"]]


def pareto_front(rows: list[dict[str, Any]]) -> set[str]:
    """Methods no other method beats on both speedup and PSNR vs full compute (among those whose output differs
    from full compute)."""
    candidates = _accelerated(rows)
    return {
        r["method"] for r in candidates
        if not any(o["speedup"] >= r["speedup"] and o["psnr_vs_full"] >= r["psnr_vs_full"]
                   and (o["speedup"], o["psnr_vs_full"]) != (r["speedup"], r["psnr_vs_full"]) for o in candidates)
    }


def matched_quality(rows: list[dict[str, Any]]) -> dict[str, str | None]:
    """For each peer setting, the hero setting that is at least as fast within ``MATCHED_QUALITY_DB`` of its
    PSNR, or ``None`` where no hero setting is."""
    hero = [r for r in _accelerated(rows) if r["family"] == HERO]
    verdicts: dict[str, str | None] = {}
    for peer in _accelerated(rows):
        if peer["family"] == HERO:
            continue
        matches = [h for h in hero if h["psnr_vs_full"] >= peer["psnr_vs_full"] - MATCHED_QUALITY_DB
                   and h["speedup"] >= peer["speedup"]]
        verdicts[peer["method"]] = max(matches, key=lambda h: h["speedup"])["method"] if matches else None
    return verdicts


def write_json(rows: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(json.dumps(rows, indent=2, allow_nan=False) + "\n")
    return path


def _number(value: float | None, digits: int) -> str:
    return "exact" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    """One table per model (fastest first), then which methods are on the Pareto front and how hero compares
    with each peer at matched quality."""
    lines = ["# Benchmarks: HERO against full compute and the known caching methods", "",
             f"Regenerate with `{command}`. Figures are ratios measured side by side in one process.", ""]
    for model, model_rows in by_model(rows).items():
        first = model_rows[0]
        truth = "psnr_vs_truth" in first
        front, matched = pareto_front(model_rows), matched_quality(model_rows)
        lines += [f"## {model}", "", f"{first['model_description']}. Lowering `{first['lowering']}`, "
                  f"{first['threads']} threads, median of {first['repeats']} generations.", ""]
        header = ["method", "speedup", "PSNR vs full", "SSIM vs full"]
        header += ["PSNR vs truth"] if truth else []
        header += ["FLOP speedup", "efficiency", "cache MiB", "graphs", "breaks", "recompiles", "fullgraph",
                   "Pareto"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in sorted(model_rows, key=lambda r: -r["speedup"]):
            cells = [r["method"], f"{r['speedup']:.2f}x", _number(r["psnr_vs_full"], 2),
                     _number(r["ssim_vs_full"], 4)]
            cells += [_number(r["psnr_vs_truth"], 2)] if truth else []
            cells += [f"{r['flop_speedup']:.2f}x", f"{r['efficiency']:.2f}", f"{r['peak_cache_mib']:.1f}",
                      str(r["graphs"]), str(r["graph_breaks"]), str(r["recompiles"]),
                      "yes" if r["fullgraph_ok"] else "no", "yes" if r["method"] in front else ""]
            lines.append("| " + " | ".join(cells) + " |")
        hero_front = sorted(m for m in front if any(r["method"] == m and r["family"] == HERO for r in model_rows))
        lines += ["", f"- Hero settings on the Pareto front: {', '.join(hero_front) or 'none'}."]
        behind = sorted(peer for peer, hero in matched.items() if hero is None)
        lines.append(f"- Peers that no hero setting matches (as fast, within {MATCHED_QUALITY_DB} dB): "
                     f"{', '.join(behind) or 'none'}.")
        refusals = sorted({f"{r['family']}: {r['fullgraph_error']}" for r in model_rows if not r["fullgraph_ok"]})
        lines += [f"- `fullgraph=True` refused: {reason}" for reason in refusals]
        lines.append("")
    lines += ["## How each method is built", "", "| family | implementation |", "|---|---|"]
    implementations = {r["family"]: r["implementation"] for r in rows}
    lines += [f"| {family} | {text} |" for family, text in implementations.items()]
    return "\n".join(lines) + "\n"


def write_pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Speedup against PSNR vs full compute, one panel per model, one curve per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = by_model(rows)
    # One colour per family in every panel (the first tab20 colours, in order of first appearance).
    peers = list(dict.fromkeys(r["family"] for r in _accelerated(rows) if r["family"] != HERO))
    colours = {family: plt.get_cmap("tab20")(i % 20) for i, family in enumerate(peers)} | {HERO: "black"}
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, (model, model_rows) in zip(axes[0], models.items()):
        families: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in _accelerated(model_rows):
            families[r["family"]].append(r)
        for family, members in families.items():
            members.sort(key=lambda r: r["psnr_vs_full"])
            style = {"linewidth": 2.5, "zorder": 3} if family == HERO else {"alpha": 0.8}
            axis.plot([r["psnr_vs_full"] for r in members], [r["speedup"] for r in members], marker="o",
                      label=family, color=colours[family], **style)
        axis.axhline(1.0, color="grey", linestyle=":", label="full compute")
        axis.set(title=model, xlabel="PSNR vs full compute (dB)", ylabel="speedup (wall time)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
