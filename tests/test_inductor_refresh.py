"""Token refresh lowered by Inductor on a dual-stream block with in-place rotary writes (CogVideoX style):
gathers, scatters and the per-block key/value caches keep the layouts Inductor compiled them for."""

from __future__ import annotations

import pytest
import torch
from refresh_models import StyledTransformer

import hero_compile
from hero_compile import HeroConfig


@pytest.mark.parametrize("kv_source", ["current", "cache"])
def test_ratio_one_refresh_under_inductor_equals_eager(kv_source: str) -> None:
    model = StyledTransformer("cogvideox", rotary=True)
    torch.manual_seed(1)
    x, context = torch.randn(2, 24, 4), torch.randn(2, 5, 32)
    config = HeroConfig(refresh_ratio=1.0, kv_source=kv_source, split=3, warmup_steps=1, interval=1000,
                        final_full_steps=0)
    backend = hero_compile.backend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):
            timestep = torch.full((2,), t)
            torch.testing.assert_close(compiled(x, context, timestep), model(x, context, timestep),
                                       atol=1e-5, rtol=1e-5)
    graph = backend.stats().graphs[0]
    assert graph.cheap_calls == 2 and not graph.refresh_skipped and graph.fallback_reason is None
