"""What timing on a CUDA device needs beyond the CPU's: waiting for the queued work, and counting device syncs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU): a wall time then covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counting_syncs(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the device syncs it made: ``set_sync_debug_mode("warn")`` turns each into a warning (``called a
    synchronizing CUDA operation``), recorded here instead of printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return result, sum("synchroniz" in str(w.message) for w in caught)
