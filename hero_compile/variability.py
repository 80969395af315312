"""Layer-wise temporal variability: the measured profile, the rule that turns it into a split, and its file.

``v_l(t) = ||F_l(t) - F_l(t-1)|| / ||F_l(t)||`` is how far block ``l``'s output moved between two consecutive
denoising steps, relative to its size. HERO refreshes the blocks whose features move (the shallow prefix) and
extrapolates the rest.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hero_compile.distributed import sum_over_ranks

SPLIT_RULE = "the shallow prefix is the leading run of blocks whose variability is above the stack's mean"

FORMAT_VERSION = 1


class ProfileMismatch(ValueError):
    """A saved profile was measured on another model (other blocks) than the one being compiled."""


def split_from_variability(variability: Sequence[float]) -> int:
    """The index of the first deep block, by HERO's definition: shallow blocks are those whose features change
    fast, deep ones those whose features are stable. The shallow prefix is the leading run of blocks whose
    variability is above the stack's mean; at least one block is shallow and one deep.

    When the first blocks move the most (HERO's observation on its world model) they are the shallow ones.
    When variability grows with depth, or is flat, only the first block is shallow and the rest extrapolated.
    """
    if len(variability) < 2:
        raise ValueError(f"a split needs at least 2 blocks, got {len(variability)}")
    if any(not math.isfinite(v) or v < 0 for v in variability):
        raise ValueError(f"variability must be finite and >= 0, got {list(variability)}")
    # Above the mean by more than rounding, so that a flat profile has no fast block.
    threshold = sum(variability) / len(variability) * (1 + 1e-9)
    leading = next((i for i, v in enumerate(variability) if v <= threshold), len(variability))
    return min(max(leading, 1), len(variability) - 1)


@dataclass(frozen=True)
class VariabilityProfile:
    """Variability of each block at each measured step (the mean over the step's calls, e.g. both CFG calls).

    Attributes:
        blocks: module paths of the blocks, in stack order.
        steps: the denoising step of each row of ``per_step`` (the first step of a generation has no
            predecessor and is not measured).
        per_step: ``per_step[i][l]`` is ``v_l`` at step ``steps[i]``.
    """

    blocks: tuple[str, ...]
    steps: tuple[int, ...]
    per_step: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if not self.per_step or len(self.per_step) != len(self.steps):
            raise ValueError("a variability profile needs one row per measured step, and at least one")
        if any(len(row) != len(self.blocks) for row in self.per_step):
            raise ValueError(f"every row of a variability profile needs {len(self.blocks)} values (one per block)")

    @property
    def variability(self) -> list[float]:
        """Mean variability of each block over the measured steps."""
        return [sum(column) / len(column) for column in zip(*self.per_step)]

    @property
    def split(self) -> int:
        return split_from_variability(self.variability)

    def check_fits(self, blocks: Sequence[str], source: str = "the profile") -> None:
        """Raise :class:`ProfileMismatch` unless the profile was measured on a stack with these blocks."""
        if tuple(blocks) != self.blocks:
            raise ProfileMismatch(
                f"{source} was measured on {len(self.blocks)} blocks ({_abbreviate(self.blocks)}) but the model "
                f"being compiled has {len(blocks)} ({_abbreviate(blocks)}); drop HeroConfig.profile to measure a "
                "profile for this model (split='auto'), or to use an explicit split"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "blocks": list(self.blocks),
            "steps": list(self.steps),
            "per_step": [list(row) for row in self.per_step],
            "variability": self.variability,
            "split": self.split,
            "rule": SPLIT_RULE,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VariabilityProfile:
        """Read a profile written by :meth:`save`; raises ``ValueError`` naming the file and what is wrong
        (``FileNotFoundError`` if there is none)."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"variability profile {path} is a directory; pass the JSON file that "
                             "hero_compile.save_profile wrote")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"variability profile {path} does not exist (write one with "
                                    "hero_compile.save_profile)") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a variability profile written by hero_compile.save_profile: "
                             f"not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a variability profile: a JSON object is expected")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version is {version!r}, but this hero-compile reads variability "
                             f"profiles of format {FORMAT_VERSION}; measure the profile again")
        try:
            return cls(_field(data, "blocks", str), _field(data, "steps", int),
                       tuple(_row(row) for row in _field(data, "per_step", list)))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _field(data: dict[str, Any], name: str, item_type: type) -> tuple[Any, ...]:
    value = data.get(name)
    if not isinstance(value, list) or not all(isinstance(v, item_type) and not isinstance(v, bool) for v in value):
        raise ValueError(f"field {name!r} must be a list of {item_type.__name__}, got {value!r:.80}")
    return tuple(value)


def _row(row: list[Any]) -> tuple[float, ...]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
        raise ValueError(f"field 'per_step' must hold rows of finite numbers, got {row!r:.80}")
    return tuple(float(v) for v in row)


class VariabilityRecorder:
    """Collects the measuring variant's per-block sums while a generation's first steps are measured.

    The sums stay on the device; they are read once, by :meth:`profile`, when the split is fixed.
    """

    def __init__(self, blocks: Sequence[str]) -> None:
        self.blocks = tuple(blocks)
        self.rows: list[tuple[int, torch.Tensor]] = []

    def record(self, step: int, sums: torch.Tensor) -> None:
        """Keep the sums of a call at ``step`` (one row per call: CFG calls are averaged per step). Under context
        parallelism they are summed over the ranks' token shards: every rank then measures the variability of
        the whole sequence, and fixes the split a single process would."""
        # A copy: the measuring variant may write its outputs' memory again on its next call (CUDA graph replay).
        self.rows.append((step, sum_over_ranks(sums.detach().clone())))

    @property
    def measured(self) -> bool:
        return bool(self.rows)

    def profile(self) -> VariabilityProfile:
        """The profile so far (one device-to-host copy)."""
        sums = torch.stack([s.float() for _, s in self.rows]).cpu().double()
        ratios = (sums[:, :, 0] / sums[:, :, 1].clamp_min(1e-30)).sqrt()
        by_step: dict[int, list[torch.Tensor]] = {}
        for (step, _), row in zip(self.rows, ratios):
            by_step.setdefault(step, []).append(row)
        steps = sorted(by_step)
        per_step = tuple(tuple(torch.stack(by_step[s]).mean(0).tolist()) for s in steps)
        return VariabilityProfile(self.blocks, tuple(steps), per_step)


def _abbreviate(paths: Sequence[str]) -> str:
    return ", ".join(paths) if len(paths) <= 3 else f"{paths[0]}, ..., {paths[-1]}"
