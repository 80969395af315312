"""The core stays lean: using the backend loads torch and hero_compile's own core modules only; the distribution
requires torch and numpy alone; the variants hero builds can be printed with ``TORCH_LOGS``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import requires
from typing import Any

import pytest
from packaging.requirements import Requirement

from hero_compile.cli import main as cli_main

# The modules of the core package that compiling and running a model with backend="hero" may load.
CORE_MODULES = {
    "hero_compile", "hero_compile.backend", "hero_compile.config", "hero_compile.stats",
    "hero_compile.variability", "hero_compile.pipeline", "hero_compile.runtime", "hero_compile.schedule",
    "hero_compile.token_selection", "hero_compile.variants", "hero_compile.lowering", "hero_compile.passes",
    "hero_compile.passes.cache_outputs", "hero_compile.passes.discover_blocks", "hero_compile.passes.errors",
    "hero_compile.passes.extrapolate", "hero_compile.passes.graph_surgery", "hero_compile.passes.input_roles",
    "hero_compile.passes.measure_variability", "hero_compile.passes.plan_refresh", "hero_compile.passes.refresh",
    "hero_compile.passes.token_axis", "hero_compile.passes.token_grid", "hero_compile.adaptive",
    "hero_compile.passes.estimate_change", "hero_compile.distributed", "hero_compile.host_copy",
    "hero_compile.timestep_reads",
}

# A fresh interpreter: build the model from torch alone, compile it once with plain aot_eager (what torch itself
# loads), then with hero through every variant (measuring, full, cheap), and list what hero loaded on top.
USE_THE_BACKEND = """
import json, sys, torch
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.mlp = nn.Linear(16, 16), nn.Linear(16, 16)
    def forward(self, x):
        return x + self.mlp(torch.tanh(self.attn(x)))

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(4))
        self.time = nn.Linear(1, 16)
    def forward(self, x, timestep):
        x = x + self.time(timestep[:, None] / 1000)[:, None]
        for block in self.blocks:
            x = block(x)
        return x

torch.manual_seed(0)
model, x = Model().eval(), torch.randn(1, 8, 16)
def generate(compiled):
    with torch.no_grad():
        return [compiled(x, torch.full((1,), 1000.0 - 50 * i)) for i in range(12)]
generate(torch.compile(model, backend="aot_eager"))
before = set(sys.modules)
generate(torch.compile(model, backend="hero", options={"lowering": "aot_eager", "cache_target": "residual"}))
import hero_compile
graph = hero_compile.stats().graphs[0]
print(json.dumps({"loaded": sorted(set(sys.modules) - before), "cheap_calls": graph.cheap_calls,
                  "before": sorted(m for m in before if m.startswith("hero_compile"))}))
"""


def use_the_backend(**env: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-c", USE_THE_BACKEND], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cheap_calls"] > 0, "the run reached cheap steps"
    return result, done.stderr


def test_using_the_backend_loads_only_core_modules() -> None:
    result, _ = use_the_backend()
    assert result["before"] == [], "plain compilation loads nothing of hero_compile"
    loaded = set(result["loaded"])
    ours = {m for m in loaded if m.startswith("hero_")}
    assert ours <= CORE_MODULES, sorted(ours - CORE_MODULES)
    tools = ("matplotlib", "tqdm", "PIL", "torchmetrics", "safetensors", "diffusers")
    assert not [m for m in loaded if m.split(".")[0] in tools]


def test_torch_logs_prints_every_variant_hero_builds() -> None:
    _, log = use_the_backend(TORCH_LOGS="+hero_compile")
    for variant in ("measuring", "full", "cheap"):
        assert f"hero: graph 0, {variant} variant:" in log, variant
    assert "def forward(" in log, "the variants' code is printed"


def test_the_distribution_requires_torch_and_numpy_only() -> None:
    unconditional = [Requirement(r) for r in requires("hero-compile") or [] if "extra ==" not in r]
    assert sorted(r.name for r in unconditional) == ["numpy", "torch"]


def test_a_subcommand_whose_tool_is_not_installed_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hero_world" else
                        real_find_spec(name, *a))
    assert cli_main(["demo", "--steps", "2"]) == 2
    assert capsys.readouterr().err.strip() == "hero-compile demo: needs the world model: pip install ./world"
