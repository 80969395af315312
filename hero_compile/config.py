"""The user-facing configuration of the HERO backend."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch-free at import, so that the command line's --help does not wait for torch
    from hero_compile.variability import VariabilityProfile

Lowering = Literal["inductor", "aot_eager", "eager"]
CacheTarget = Literal["residual", "output"]
KeyValueSource = Literal["current", "cache"]
Schedule = Literal["fixed", "adaptive"]

_LOWERINGS = ("inductor", "aot_eager", "eager")
_CACHE_TARGETS = ("residual", "output")
_KV_SOURCES = ("current", "cache")
_SCHEDULES = ("fixed", "adaptive")


@dataclass(frozen=True)
class HeroConfig:
    """How HERO accelerates a denoiser. Every field is validated; a wrong value raises ``ValueError``, an unknown
    field ``TypeError`` naming the closest one.

    Attributes:
        token_refresh: ``True`` recomputes a rotating subset of each shallow block's tokens on cheap steps;
            ``False`` runs shallow blocks in full (extrapolation of the deep blocks only).
        refresh_ratio: share of tokens a shallow block recomputes on a cheap step, in (0, 1]. Lower is
            faster; every token is still refreshed at least once every ``ceil(1 / refresh_ratio)`` cheap steps.
        kv_source: where a refreshed block's attention takes keys and values on a cheap step: ``"current"``
            projects every token's current input (exact attention over fresh context, costs the key/value
            projections of all tokens) or ``"cache"`` projects only the refreshed tokens and reads the others
            from a per-block key/value cache (cheaper, staler context, more memory). Keys and values of a
            data-dependent length (text tokens packed with ``nonzero()``, as Mochi does) have no cache of fixed
            size and are always projected from the current input.
        patch_size: side, in tokens, of the square spatial patches the refresh subset is balanced over (>= 1).
        warmup_steps: denoising steps computed in full at the start of a generation (>= 0). They fill the
            extrapolation history; fewer than ``extrapolation_order + 1`` lowers the order used early on.
        interval: one step in ``interval`` after warm-up is computed in full, the others are cheap (>= 1).
            1 disables acceleration; larger is faster and drifts further from full compute. Used by the
            ``"fixed"`` schedule only.
        schedule: which steps after warm-up are full: ``"fixed"`` (one in ``interval``) or ``"adaptive"``
            (decided per step from a change the graph measures, see ``adaptive_threshold``; the same decision
            for every call of a step, so both calls of a guided step agree).
        adaptive_threshold: with ``schedule="adaptive"``, the relative L1 distance (``sum|x - x_full| /
            sum|x_full|``) of the block stack's input ``x`` from its value at the last full step at which a step
            is computed in full (>= 0). Every call measures it on the device (cheap calls inside the graph, full
            calls from the previous full step); the host reads it one call later or after, never waiting, and
            predicts the next step's distance as the newest distance per step times the steps since the last full
            one. Until a generation's first reading lands, the previous generation's first one stands in for it
            if that generation ran the same timesteps; without it the step is full. The spacing of full steps
            this gives is kept until the measured rate moves 10 % past it, so that a rate at a boundary does not
            alternate two spacings (even spacing extrapolates least). 0 computes every step in full; larger is
            faster and drifts further from full compute. On a GPU, which readings have landed by a decision
            depends on timing, and so can the decisions; under ``torch.use_deterministic_algorithms(True)`` each
            step waits for the earlier steps' readings instead, and decides the same from run to run.
        max_cheap_steps: with ``schedule="adaptive"``, the most cheap steps in a row (>= 1), however small the
            measured change: extrapolation error grows with the distance from the last full steps.
        final_full_steps: the last steps of a generation computed in full (>= 0), where fine detail forms.
            Applied once the generation's length is known: from the previous generation with the same
            timestep schedule, so the first generation differs from the next ones. 0 by default: every
            generation with the same inputs gives the same output (measured cost in docs/results.md).
        split: index of the first deep block (extrapolated on cheap steps), or ``"auto"`` to choose it from
            the blocks' measured temporal variability (``hero_compile.variability``). 0 extrapolates the whole
            stack; the block count extrapolates nothing.
        profile: a variability profile, or the path of one saved by ``hero_compile.save_profile``; with
            ``split="auto"`` its split is used and nothing is measured. A profile of another model (other
            blocks) is an error.
        profile_steps: with ``split="auto"`` and no ``profile``, the first generation's first
            ``profile_steps`` steps run in full while the profile is measured (>= 2: the first step of a
            generation has no predecessor); the split is then fixed and cheap steps begin.
        extrapolation_order: 0 reuses the last full step's deep feature (FORA-like), 1 extrapolates
            linearly in the timestep (HERO), 2 quadratically. Higher orders need more history and amplify noise.
        extrapolation_damping: share of the extrapolated change from the last full step's feature that a cheap
            step applies, in [0, 1]: 1 is the plain polynomial extrapolation, 0 reuses the last feature as order
            0 does. Between them it shrinks a slope estimated from two full steps. With
            ``cache_target="residual"`` 0.5 measured closer to full compute than 0 at 20 of 24 points of the
            step sweep's two models and than 1 at 15 (the input carries the steady drift; the residual's slope is
            noisy); with ``"output"`` it measured worse (the drift is in the output and the slope tracks it).
            Measurements in docs/results.md.
        cache_target: what the deep segment caches: ``"output"`` (its output, used as is; the shallow blocks
            that only feed the deep segment are then skipped on cheap steps too) or ``"residual"`` (its output
            minus its input, added to the shallow blocks' current output, which token refresh recomputes in
            part). ``"output"`` measured faster and closer to full compute on the benchmark DiT and on the
            world model (docs/results.md); ``"residual"`` is HERO's hierarchy of refresh and extrapolation.
        timestep_input: the name of the forward argument that holds the timestep (``"timestep"``), or ``None``
            to find it in the graph: the argument tensor with at most one dimension that feeds a sinusoidal
            embedding (``sin``/``cos``/``exp``), else one named like a timestep. A graph with none is compiled
            without acceleration, and ``stats()`` says so.
        lowering: how the graph variants are compiled: ``"inductor"`` (fast), ``"aot_eager"`` (quick to
            compile, for tests), or ``"eager"`` (plain FX, for debugging).
        enabled: ``False`` compiles the graph exactly as plain ``backend="inductor"`` would.
    """

    token_refresh: bool = True
    refresh_ratio: float = 0.25
    kv_source: KeyValueSource = "current"
    patch_size: int = 2
    warmup_steps: int = 2
    interval: int = 3
    schedule: Schedule = "fixed"
    adaptive_threshold: float = 0.06
    max_cheap_steps: int = 4
    final_full_steps: int = 0
    split: int | Literal["auto"] = "auto"
    profile: str | os.PathLike[str] | VariabilityProfile | None = None
    profile_steps: int = 4
    extrapolation_order: int = 1
    extrapolation_damping: float = 1.0
    cache_target: CacheTarget = "output"
    timestep_input: str | None = None
    lowering: Lowering = "inductor"
    enabled: bool = True

    def __new__(cls, *args: Any, **fields: Any) -> HeroConfig:
        # A misspelled field would otherwise be Python's bare "unexpected keyword argument", with no suggestion.
        _reject_unknown(fields, TypeError)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        _check(isinstance(self.refresh_ratio, (int, float)) and not isinstance(self.refresh_ratio, bool)
               and 0.0 < self.refresh_ratio <= 1.0,
               "refresh_ratio", self.refresh_ratio, "a number in (0, 1]")
        _check(isinstance(self.token_refresh, bool), "token_refresh", self.token_refresh, "a bool")
        _check(self.kv_source in _KV_SOURCES, "kv_source", self.kv_source, f"one of {_KV_SOURCES}")
        _check(_is_int(self.patch_size) and self.patch_size >= 1, "patch_size", self.patch_size, "an int >= 1")
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0,
               "warmup_steps", self.warmup_steps, "an int >= 0")
        _check(_is_int(self.interval) and self.interval >= 1, "interval", self.interval, "an int >= 1")
        _check(self.schedule in _SCHEDULES, "schedule", self.schedule, f"one of {_SCHEDULES}")
        _check(isinstance(self.adaptive_threshold, (int, float)) and not isinstance(self.adaptive_threshold, bool)
               and 0.0 <= self.adaptive_threshold < math.inf,
               "adaptive_threshold", self.adaptive_threshold, "a finite number >= 0")
        _check(_is_int(self.max_cheap_steps) and self.max_cheap_steps >= 1,
               "max_cheap_steps", self.max_cheap_steps, "an int >= 1")
        _check(_is_int(self.final_full_steps) and self.final_full_steps >= 0,
               "final_full_steps", self.final_full_steps, "an int >= 0")
        _check(self.split == "auto" or (_is_int(self.split) and self.split >= 0),
               "split", self.split, "'auto' or an int >= 0")
        _check(self.profile is None or isinstance(self.profile, (str, os.PathLike)) or _is_profile(self.profile),
               "profile", self.profile, "None, a path or a VariabilityProfile")
        _check(_is_int(self.profile_steps) and self.profile_steps >= 2,
               "profile_steps", self.profile_steps, "an int >= 2")
        _check(_is_int(self.extrapolation_order) and self.extrapolation_order in (0, 1, 2),
               "extrapolation_order", self.extrapolation_order, "0, 1 or 2")
        _check(isinstance(self.extrapolation_damping, (int, float)) and not isinstance(self.extrapolation_damping, bool)
               and 0.0 <= self.extrapolation_damping <= 1.0,
               "extrapolation_damping", self.extrapolation_damping, "a number in [0, 1]")
        _check(self.cache_target in _CACHE_TARGETS, "cache_target", self.cache_target, f"one of {_CACHE_TARGETS}")
        _check(self.timestep_input is None
               or (isinstance(self.timestep_input, str) and self.timestep_input.isidentifier()),
               "timestep_input", self.timestep_input, "None or the name of a forward argument")
        _check(self.lowering in _LOWERINGS, "lowering", self.lowering, f"one of {_LOWERINGS}")
        _check(isinstance(self.enabled, bool), "enabled", self.enabled, "a bool")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> HeroConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        _reject_unknown(changes, ValueError)
        return dataclasses.replace(self, **changes)


def unknown_names_message(kind: str, names: Iterable[str], valid: Sequence[str], also_valid: str = "",
                          more_valid: Iterable[str] = ()) -> str:
    """``unknown option 'intervall'; did you mean 'interval'? valid: ...``: the closest of ``valid`` is suggested,
    else the closest of ``more_valid``, which is not listed (Inductor's hundreds of config keys: ``also_valid``
    names them)."""
    more = list(more_valid)
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, valid, n=1) or difflib.get_close_matches(name, more, n=1)
        parts.append(f"unknown {kind} {name!r}" + (f"; did you mean {close[0]!r}?" if close else ";"))
    return f"{' '.join(parts)} valid: {', '.join(valid)}{also_valid}"


def _reject_unknown(names: Iterable[str], error: type[Exception]) -> None:
    unknown = sorted(set(names) - set(HeroConfig.field_names()))
    if unknown:
        raise error(unknown_names_message("HeroConfig field", unknown, HeroConfig.field_names()))


def _is_profile(value: object) -> bool:
    # Imported only for a value that is neither None nor a path: the module needs torch.
    from hero_compile.variability import VariabilityProfile

    return isinstance(value, VariabilityProfile)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, field: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"HeroConfig.{field} must be {allowed}, got {value!r}")
