"""Patch-wise, frequency-aware choice of the tokens that shallow blocks refresh on a cheap step.

The token grid (frames x height x width, in tokens; or a 1-D sequence) is cut into ``patch_size`` patches;
each patch contributes a fixed number of its stalest tokens, counted in cheap steps since their last
refresh, ties going to the lower index. No score is computed on the device and the subset has a fixed
size, so the compiled graph never changes. A patch of ``m`` tokens refreshes ``ceil(ratio * m)`` of them per
step, so every token is refreshed at least once every ``ceil(1 / ratio)`` cheap steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def patch_ids(grid: Sequence[int], patch_size: int) -> np.ndarray:
    """The patch of every token, tokens in row-major grid order; the last two grid axes are cut into squares."""
    shape = tuple(int(s) for s in grid)
    coords = np.indices(shape).reshape(len(shape), -1)
    if len(shape) == 1:
        return coords[0] // (patch_size * patch_size)
    rows, cols = coords[-2] // patch_size, coords[-1] // patch_size
    patches_per_row = math.ceil(shape[-1] / patch_size)
    patches_per_frame = math.ceil(shape[-2] / patch_size) * patches_per_row
    frames = np.ravel_multi_index(coords[:-2], shape[:-2]) if len(shape) > 2 else 0
    return frames * patches_per_frame + rows * patches_per_row + cols


class TokenSelector:
    """Chooses each cheap step's refresh subset and tracks how stale every token is."""

    def __init__(self, grid: Sequence[int], patch_size: int, ratio: float) -> None:
        self.patch_of_token = patch_ids(grid, patch_size)
        counts = np.bincount(self.patch_of_token)
        self.quota = np.ceil(ratio * counts - 1e-9).astype(np.int64)
        self.size = int(self.quota.sum())
        self.staleness = np.zeros(len(self.patch_of_token), dtype=np.int64)
        # Tokens sorted by patch; a step takes the first ``quota`` of each patch after sorting by staleness.
        self._patch_start = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def fresh_copy(self) -> TokenSelector:
        """A selector of the same grid whose tokens are all fresh (each call slot tracks its own staleness)."""
        copy = object.__new__(TokenSelector)
        copy.patch_of_token, copy.quota, copy.size = self.patch_of_token, self.quota, self.size
        copy._patch_start = self._patch_start
        copy.staleness = np.zeros_like(self.staleness)
        return copy

    def mark_all_fresh(self) -> None:
        """A full step refreshed every token."""
        self.staleness[:] = 0

    def select(self) -> np.ndarray:
        """The sorted token indices to refresh now; their staleness resets, every other token ages."""
        tokens = np.arange(len(self.patch_of_token))
        order = np.lexsort((tokens, -self.staleness, self.patch_of_token))
        rank_in_patch = np.arange(len(order)) - self._patch_start[self.patch_of_token[order]]
        chosen = np.sort(order[rank_in_patch < self.quota[self.patch_of_token[order]]])
        self.staleness += 1
        self.staleness[chosen] = 0
        return chosen
