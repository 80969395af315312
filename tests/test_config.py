"""HeroConfig validation and how ``torch.compile``'s ``mode=`` / ``options=`` reach the backend."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re

import pytest
import torch
from models import StackModel, euler
from torch._inductor import list_mode_options

import hero_compile
from hero_compile import HeroBackend, HeroConfig
from hero_compile.backend import resolve_options

BAD_VALUES: dict[str, list[object]] = {
    "refresh_ratio": [0, 0.0, -0.25, 1.0001, 2, math.nan, math.inf, "0.5", None, [0.5]],
    "patch_size": [0, -1, 1.5, 2.0, "2", None, True, False],
    "warmup_steps": [-1, 1.0, "2", None, True, False],
    "interval": [0, -3, 2.0, "3", None, True, False],
    "schedule": ["Adaptive", "dynamic", "", None, 1],
    "adaptive_threshold": [-0.1, math.nan, math.inf, "0.1", None, True, [0.1]],
    "max_cheap_steps": [0, -1, 2.0, "4", None, True],
    "final_full_steps": [-1, 0.5, "1", None, True, False],
    "split": [-1, 1.5, "Auto", "half", "", None, True, False],
    "extrapolation_order": [-1, 3, 1.0, "1", None, True, False],
    "extrapolation_damping": [-0.1, 1.5, math.nan, math.inf, "0.5", None, True, [0.5]],
    "cache_target": ["Residual", "input", "", None, 0, "outputs"],
    "lowering": ["Inductor", "cudagraphs", "aot-eager", "", None, 1],
    "enabled": [1, 0, "yes", "True", None],
    "kv_source": ["Cache", "kv", "", None, 1],
    "token_refresh": [1, 0, "yes", None],
    "profile": [1, b"profile.json", True, ["profile.json"]],
    "profile_steps": [0, 1, 2.0, "4", None, True],
    "timestep_input": ["", "2t", "time step", 1, True, ["t"]],
}

GOOD_VALUES: dict[str, list[object]] = {
    "refresh_ratio": [1e-6, 0.25, 1.0, 1],
    "patch_size": [1, 2, 16],
    "warmup_steps": [0, 1, 50],
    "interval": [1, 3, 100],
    "schedule": ["fixed", "adaptive"],
    "adaptive_threshold": [0, 0.0, 0.1, 1e6],
    "max_cheap_steps": [1, 4, 100],
    "final_full_steps": [0, 1, 10],
    "split": ["auto", 0, 1, 1000],
    "extrapolation_order": [0, 1, 2],
    "extrapolation_damping": [0, 0.0, 0.5, 1, 1.0],
    "cache_target": ["residual", "output"],
    "lowering": ["inductor", "aot_eager", "eager"],
    "enabled": [True, False],
    "kv_source": ["current", "cache"],
    "token_refresh": [True, False],
    "profile": [None, "profile.json", pathlib.Path("profile.json")],
    "profile_steps": [2, 4, 100],
    "timestep_input": [None, "t", "timestep", "sigma_t"],
}


def test_every_field_is_covered() -> None:
    assert set(BAD_VALUES) == set(HeroConfig.field_names()) == set(GOOD_VALUES)


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in BAD_VALUES.items() for v in values], ids=lambda x: repr(x)
)
def test_bad_value_raises_value_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"\b{re.escape(field)}\b"):
        HeroConfig(**{field: value})
    # replace() validates like the constructor
    with pytest.raises(ValueError, match=rf"\b{re.escape(field)}\b"):
        HeroConfig().replace(**{field: value})


def test_bool_refresh_ratio_is_rejected() -> None:
    with pytest.raises(ValueError, match="refresh_ratio"):
        HeroConfig(refresh_ratio=True)


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in GOOD_VALUES.items() for v in values], ids=lambda x: repr(x)
)
def test_good_value_is_kept(field: str, value: object) -> None:
    config = HeroConfig(**{field: value})
    assert getattr(config, field) == value
    assert getattr(HeroConfig().replace(**{field: value}), field) == value


def test_defaults_and_frozen() -> None:
    config = HeroConfig()
    assert config.enabled is True and config.lowering == "inductor" and config.split == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.interval = 5  # type: ignore[misc]


def test_replace_rejects_unknown_fields_and_keeps_the_original() -> None:
    config = HeroConfig(interval=4)
    with pytest.raises(ValueError, match=r"nope.*valid: token_refresh"):
        config.replace(nope=1)
    with pytest.raises(ValueError, match="bogus"):
        config.replace(interval=2, bogus=True)
    changed = config.replace(interval=2, cache_target="residual")
    assert (changed.interval, changed.cache_target) == (2, "residual")
    assert (config.interval, config.cache_target) == (4, "output")


# ---------------------------------------------------------------------------------------------------------------
# resolve_options: a pure function, no compile needed
# ---------------------------------------------------------------------------------------------------------------


def test_resolve_options_without_options_is_identity() -> None:
    config = HeroConfig(interval=5)
    resolved, inductor = resolve_options(config, None, None)
    assert resolved == config and inductor == {}


def test_resolve_options_splits_hero_fields_from_inductor_keys() -> None:
    options = {"interval": 1, "max_autotune": False, "lowering": "inductor"}
    resolved, inductor = resolve_options(HeroConfig(lowering="aot_eager"), options, None)
    assert resolved.interval == 1 and resolved.lowering == "inductor"
    assert inductor == {"max_autotune": False}
    assert options == {"interval": 1, "max_autotune": False, "lowering": "inductor"}, "caller's dict mutated"


def test_resolve_options_mode_gives_inductor_mode_patches() -> None:
    mode = "max-autotune-no-cudagraphs"
    resolved, inductor = resolve_options(HeroConfig(), None, mode)
    assert resolved == HeroConfig()
    assert inductor == list_mode_options(mode)
    assert inductor  # the mode does patch something
    # explicit options win over the mode's
    _, inductor = resolve_options(HeroConfig(), {"max_autotune": False}, mode)
    assert inductor == {**list_mode_options(mode), "max_autotune": False}


def test_a_misspelled_field_names_the_closest_one() -> None:
    with pytest.raises(TypeError, match=r"^unknown HeroConfig field 'intervall'; did you mean 'interval'\? valid: "):
        HeroConfig(intervall=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"^unknown HeroConfig field 'refresh_ration'; did you mean 'refresh_ratio'"):
        HeroConfig().replace(refresh_ration=0.5)


def test_a_misspelled_option_names_the_closest_field_or_inductor_key() -> None:
    with pytest.raises(ValueError, match=r"^unknown option 'intervall'; did you mean 'interval'\? valid: .*"
                                         r"enabled, or any Inductor config key$"):
        resolve_options(HeroConfig(), {"intervall": 4}, None)
    with pytest.raises(ValueError, match=r"^unknown option 'max_autotun'; did you mean 'max_autotune'\?"):
        resolve_options(HeroConfig(), {"max_autotun": True}, None)
    with pytest.raises(ValueError, match=r"^unknown option 'zzzzzz'; valid: "):
        resolve_options(HeroConfig(), {"zzzzzz": 1}, None)


def test_resolve_options_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="nope"):
        resolve_options(HeroConfig(), {"nope": 1, "interval": 2}, None)
    with pytest.raises(ValueError, match="interval"):
        resolve_options(HeroConfig(), {"interval": 0}, None)


def test_backend_rejects_unexpected_keyword_arguments(capture) -> None:  # type: ignore[no-untyped-def]
    model = StackModel(depth=2)
    x, t = torch.randn(1, 3, 4), torch.tensor([500.0])
    gm = capture(model, x, t)
    with pytest.raises(TypeError, match="dynamic"):
        HeroBackend(HeroConfig(lowering="aot_eager"))(gm, [x, t], dynamic=True)


# ---------------------------------------------------------------------------------------------------------------
# options through torch.compile
# ---------------------------------------------------------------------------------------------------------------


def test_a_misspelled_compile_option_fails_at_the_first_call_with_the_closest_field() -> None:
    # torch.compile hands a backend its options only with the first graph: the earliest hero can check them.
    model = StackModel(depth=2)
    compiled = torch.compile(model, backend=hero_compile.backend(HeroConfig(lowering="aot_eager")),
                             options={"intervall": 4})
    with pytest.raises(Exception, match=r"unknown option 'intervall'; did you mean 'interval'\?"):
        euler(compiled, torch.randn(1, 3, 4), 1)


def test_interval_option_overrides_the_config() -> None:
    model = StackModel(depth=4)
    x = torch.randn(1, 3, 4)
    backend = hero_compile.backend(HeroConfig(lowering="aot_eager", interval=3))

    euler(torch.compile(model, backend=backend, options={"interval": 1}), x, 10)
    overridden = backend.stats().graphs[-1]
    assert overridden.accelerated
    assert (overridden.full_calls, overridden.cheap_calls) == (10, 0)
    assert backend.config.interval == 3, "options must not change the backend's own config"

    torch._dynamo.reset()
    euler(torch.compile(model, backend=backend), x, 10)
    plain = backend.stats().graphs[-1]
    assert plain is not overridden
    assert plain.cheap_calls > 0 and plain.full_calls + plain.cheap_calls == 10
