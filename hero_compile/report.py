"""Render an :class:`~hero_compile.analysis.AnalysisReport` as Markdown, JSON and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from hero_compile.analysis import AnalysisReport

PLOTS = ("variability.png", "variability_heatmap.png", "cost.png")


def write_report(report: AnalysisReport, out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``report.json``, ``profile.json`` (for ``HeroConfig(profile=...)``) and the plots
    into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json"]
    written[0].write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if report.profile is not None:
        written.append(report.profile.save(out_dir / "profile.json"))
        written += _plots(report, out_dir)
    markdown = out_dir / "report.md"
    markdown.write_text(to_markdown(report, plots=[p.name for p in written if p.suffix == ".png"]))
    return [markdown, *written]


def to_markdown(report: AnalysisReport, plots: list[str] | None = None) -> str:
    lines = ["# HERO analysis", ""]
    if report.fallback_reason is not None:
        return "\n".join([*lines, f"**Not accelerated**: {report.fallback_reason}", ""])
    if report.split is not None:
        shallow = "block 0 is" if report.split == 1 else f"blocks 0 to {report.split - 1} are"
        lines += [f"{len(report.blocks)} blocks found. Split at block {report.split}: {shallow} shallow, the "
                  "rest deep (extrapolated on cheap steps), the split `cache_target=\"residual\"` refreshes and "
                  "extrapolates by; output caching, the default, predicts the whole stack. The table's \"on a "
                  "cheap step\" and the costs are the analyzed configuration's.", "",
                  f"Why: {report.split_reason}.", ""]
    lines += ["| # | block | variability | role | on a cheap step | token axis |", "|---|---|---|---|---|---|"]
    for index, block in enumerate(report.blocks):
        variability = f"{block.variability:.4f}" if block.variability is not None else "-"
        lines.append(f"| {index} | `{block.path}` | {variability} | {block.role or '-'} | "
                     f"{block.cheap_step or '-'} | {block.refresh} |")
    lines += ["", "## Cost and speed", "", "| | |", "|---|---|"]
    rows = [
        ("full calls / cheap calls per generation", f"{report.full_calls} / {report.cheap_calls}"),
        ("FLOPs of a full call", _giga(report.flops_full_call)),
        ("FLOPs of a cheap call", _giga(report.flops_cheap_call)),
        ("FLOPs of a generation, full compute", _giga(report.flops_generation_full)),
        ("FLOPs of a generation, hero", _giga(report.flops_generation_hero)),
        ("FLOP-bound speedup", _ratio(report.flop_speedup)),
        (f"measured speedup ({report.lowering}, median)", _ratio(report.speedup)),
        ("PSNR of hero vs full compute", f"{report.psnr_vs_full:.1f} dB" if report.psnr_vs_full else "-"),
    ]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", *(f"![{name}]({name})" for name in plots or [])]
    return "\n".join(lines) + "\n"


def _plots(report: AnalysisReport, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert report.profile is not None and report.split is not None
    profile = report.profile
    indices = range(len(profile.blocks))
    paths = [out_dir / name for name in PLOTS]

    figure, axes = plt.subplots(figsize=(6, 3.5))
    colours = ["tab:orange" if i < report.split else "tab:blue" for i in indices]
    axes.bar(indices, profile.variability, color=colours)
    axes.axvline(report.split - 0.5, color="black", linestyle="--", linewidth=1)
    axes.set(xlabel="block", ylabel="mean ||F(t) - F(t-1)|| / ||F(t)||",
             title="Temporal variability per block (orange: shallow, blue: deep)")
    figure.tight_layout()
    figure.savefig(paths[0], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 3.5))
    image = axes.imshow([list(row) for row in zip(*profile.per_step)], aspect="auto", cmap="viridis",
                        extent=(profile.steps[0] - 0.5, profile.steps[-1] + 0.5, len(indices) - 0.5, -0.5))
    figure.colorbar(image, ax=axes, label="variability")
    axes.set(xlabel="denoising step", ylabel="block", title="Variability per block and step")
    figure.tight_layout()
    figure.savefig(paths[1], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 3.5))
    names = ["full call", "cheap call", "generation\nfull", "generation\nhero"]
    values = [report.flops_full_call, report.flops_cheap_call, report.flops_generation_full,
              report.flops_generation_hero]
    relative = [(v or 0) / (report.flops_full_call or 1) for v in values[:2]]
    relative += [(v or 0) / (report.flops_generation_full or 1) for v in values[2:]]
    axes.bar(names, relative, color=["tab:gray", "tab:green", "tab:gray", "tab:green"])
    axes.set(ylabel="FLOPs (relative to full)", title="Cost per variant and per generation")
    figure.tight_layout()
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    return paths


def _giga(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.4g} GFLOP"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
