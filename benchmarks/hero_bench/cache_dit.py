"""cache-dit's DBCache with its TaylorSeer calibrator, applied as its documentation says for a transformer alone:
``cache_dit.enable_cache(transformer, cache_config=..., calibrator_config=...)`` on a copy of the model, then
``torch.compile`` with the benchmark's lowering.

DBCache always runs the first ``Fn`` blocks; when the relative change of their residual since the last full step
is under a threshold, the remaining blocks are replaced by their cached residual, forecast by an order-1 Taylor
expansion. ``F1B0`` is its FBCache-like setting. cache-dit's ``set_compile_configs()`` is not called: it changes
Dynamo's and Inductor's global settings, which would compile every other method of the benchmark differently.
"""

from __future__ import annotations

from typing import Any

import cache_dit
from torch import nn

from hero_bench.diffusers_hooks import isolated_copy, tensor_bytes
from hero_bench.methods import BuildOptions, Candidate, Method, compile_with

THRESHOLD = 0.12
"""The residual-difference threshold of cache-dit's documented DBCache F1B0 + TaylorSeer setting."""


def dbcache(steps: int, fn_blocks: int, threshold: float = THRESHOLD) -> Method:
    """DBCache ``F{fn_blocks}B0`` at ``threshold`` with the order-1 TaylorSeer calibrator, for ``steps``-step
    generations. Its default 8 warm-up steps are meant for 28 to 50 steps: a quarter of the steps here, and at
    least the two full steps an order-1 forecast needs."""

    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        copied = isolated_copy(model)
        cache_config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=fn_blocks, Bn_compute_blocks=0, residual_diff_threshold=threshold,
            max_warmup_steps=max(2, steps // 4), num_inference_steps=steps,
            # Guidance run as two calls a step is what cache-dit calls separate CFG.
            enable_separate_cfg=options.calls_per_step == 2,
        )
        cache_dit.enable_cache(copied, cache_config=cache_config,
                               calibrator_config=cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1))
        # A transformer cached alone keeps a persistent context: refreshing it rebuilds it from its config.
        return Candidate(compile_with(options, copied), reset=lambda: cache_dit.refresh_context(copied),
                         cache_bytes=lambda: _context_bytes(copied))

    return Method(f"cache-dit F{fn_blocks}B0 r={threshold}", "cache-dit DBCache",
                  "cache-dit enable_cache (DBCache + TaylorSeer order 1), model compiled around it", build)


def _context_bytes(model: Any) -> int:
    """Tensors held by the cache contexts of ``model``: DBCache's buffers and the calibrators' Taylor terms."""
    total = 0
    for context in model._context_manager._cached_context_manager.values():
        total += tensor_bytes(context.buffers)
        calibrators = (context.calibrator, context.encoder_calibrator, context.cfg_calibrator,
                       context.cfg_encoder_calibrator)
        for calibrator in (c for c in calibrators if c is not None):
            total += sum(tensor_bytes(state.state) for state in calibrator.states.values())
    return total


def cache_dit_methods(depth: int, steps: int) -> list[Method]:
    """DBCache F1B0 and with half the stack as its probe (F4B0 on the 8-block benchmark model)."""
    return [dbcache(steps, 1), dbcache(steps, depth // 2)]
