"""The maze environment: deterministic per seed, depth consistent with the geometry, actions that act."""

from __future__ import annotations

import numpy as np
import pytest
from hero_world.env import TURN_COLUMNS, Action, Maze, episode, random_actions, ray_angles
from hypothesis import given, settings
from hypothesis import strategies as st


@given(seed=st.integers(0, 10_000), length=st.integers(1, 20))
@settings(max_examples=20)
def test_episodes_are_deterministic_per_seed(seed: int, length: int) -> None:
    actions = random_actions(np.random.default_rng(seed), length)
    first, second = episode(seed, actions), episode(seed, actions)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    other = episode(seed + 1, actions)
    assert not np.array_equal(first[0], other[0])


def distance_to_wall(maze: Maze, angle: float, step: float = 1e-4) -> float:
    """March from the camera along ``angle`` until inside a wall cell."""
    x, y = maze.pose.x, maze.pose.y
    dx, dy = np.cos(angle), np.sin(angle)
    travelled = 0.0
    while not maze.walls[int(y + travelled * dy), int(x + travelled * dx)]:
        travelled += step
    return travelled


@given(seed=st.integers(0, 10_000), walk=st.integers(0, 15))
@settings(max_examples=25)
def test_depth_is_the_distance_along_the_ray_to_the_first_wall(seed: int, walk: int) -> None:
    maze = Maze(seed, resolution=16)
    for action in random_actions(np.random.default_rng(seed), walk):
        maze.step(Action(int(action)))
    _, depth = maze.render()
    angles = ray_angles(maze.pose.angle, 16)
    for column in range(0, 16, 5):
        expected = distance_to_wall(maze, angles[column])
        seen = depth[:, column][np.isfinite(depth[:, column])]
        assert seen.size > 0 and np.allclose(seen, expected, atol=2e-3)
        # Cylindrical projection: the wall spans resolution / depth rows (all of them when closer than one cell).
        assert abs(seen.size - min(16 / expected, 16)) <= 1.0


def test_actions_change_the_view_as_expected() -> None:
    maze = Maze(7)
    start = maze.render()[0]
    maze.step(Action.TURN_LEFT)
    turned = maze.render()[0]
    maze.step(Action.TURN_RIGHT)
    assert np.array_equal(maze.render()[0], start)  # turning is exactly invertible
    assert not np.array_equal(turned, start)


@given(seed=st.integers(0, 10_000))
@settings(max_examples=20)
def test_a_turn_shifts_the_view_by_whole_columns(seed: int) -> None:
    maze = Maze(seed)
    start_rgb, start_depth = maze.render()
    maze.step(Action.TURN_RIGHT)
    rgb, depth = maze.render()
    # Turning right brings the right part of the view to the left.
    assert np.allclose(rgb[:, :-TURN_COLUMNS], start_rgb[:, TURN_COLUMNS:], atol=1e-5)
    assert np.allclose(depth[:, :-TURN_COLUMNS], start_depth[:, TURN_COLUMNS:], atol=1e-5)


@pytest.mark.parametrize("action", [Action.FORWARD, Action.STRAFE_LEFT, Action.STRAFE_RIGHT])
def test_moves_never_enter_walls(action: Action) -> None:
    maze = Maze(11)
    for _ in range(60):
        maze.step(action)
        assert not maze.walls[int(maze.pose.y), int(maze.pose.x)]
