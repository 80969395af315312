"""The patch-wise, frequency-aware refresh subset: static size, no duplicates, bounded staleness, balance."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hero_compile.token_selection import TokenSelector, patch_ids

grids = st.one_of(
    st.tuples(st.integers(1, 40)),
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
)


@given(grid=grids, patch=st.integers(1, 4), ratio=st.floats(0.05, 1.0), steps=st.integers(1, 25))
def test_selection_is_static_unique_balanced_and_refreshes_every_token(
    grid: tuple[int, ...], patch: int, ratio: float, steps: int
) -> None:
    selector = TokenSelector(grid, patch, ratio)
    tokens = math.prod(grid)
    patches = patch_ids(grid, patch)
    bound = math.ceil(1 / ratio)
    last_refresh = np.full(tokens, -1)
    for step in range(steps):
        chosen = selector.select()
        assert len(chosen) == selector.size
        assert len(np.unique(chosen)) == len(chosen)
        assert np.all(np.diff(chosen) > 0) and chosen.min() >= 0 and chosen.max() < tokens
        # Patch-balanced: each patch gives its quota, ceil(ratio * patch size), every step.
        per_patch = np.bincount(patches[chosen], minlength=patches.max() + 1)
        assert np.array_equal(per_patch, selector.quota)
        last_refresh[chosen] = step
        if step + 1 >= bound:
            # Every token was refreshed within the last ceil(1 / ratio) cheap steps.
            assert np.all(last_refresh > step - bound)


def test_ties_break_towards_lower_indices_and_full_steps_reset_staleness() -> None:
    selector = TokenSelector((8,), patch_size=2, ratio=0.25)  # one patch of 4 tokens per row of the 1-D grid
    assert selector.select().tolist() == [0, 4]
    assert selector.select().tolist() == [1, 5]
    selector.mark_all_fresh()
    assert selector.select().tolist() == [0, 4]


def test_patches_of_a_video_grid_are_square_within_each_frame() -> None:
    ids = patch_ids((2, 4, 4), 2).reshape(2, 4, 4)
    assert ids[0, :2, :2].tolist() == [[0, 0], [0, 0]]
    assert ids[0, 2:, 2:].tolist() == [[3, 3], [3, 3]]
    assert set(ids[1].ravel()) == {4, 5, 6, 7}
