"""pytest plugin for ``scripts/calibrate_bars.py``: append every PSNR a test computes to ``HERO_PSNR_LOG``.

Loaded with ``-p psnr_probe`` before any test module imports the measures, so the names the tests import are the
recording ones.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import hero_world.demo

from hero_compile import measurement


def _recording(measure: Callable[..., float]) -> Callable[..., float]:
    @functools.wraps(measure)
    def record(*args: object, **kwargs: object) -> float:
        value = measure(*args, **kwargs)
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        with open(os.environ["HERO_PSNR_LOG"], "a") as log:
            log.write(json.dumps({"test": test, "psnr": value}) + "\n")
        return value

    return record


measurement.psnr_over_reference_range = _recording(measurement.psnr_over_reference_range)
hero_world.demo.psnr_rgb = _recording(hero_world.demo.psnr_rgb)
