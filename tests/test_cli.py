"""Every file and command-line error of ``hero-compile`` is one line naming the file or argument and what is wrong,
with exit code 2 and no traceback. None of these tests runs a demo, an analysis or a benchmark: each fails (or, for
the values that are accepted, stops) before any work."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hero_compile import cli
from hero_compile.cli import main

# Targets for ``hero-compile analyze test_cli:...`` (conftest puts tests/ on sys.path, so this module is importable).
not_a_factory = 42


def raising_factory() -> Any:
    raise ValueError("no such model size")


def returns_none() -> None:
    return None


def _parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The last line argparse prints for ``argv``, after checking that it exits 2 with no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return err.strip().splitlines()[-1]


def _command_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a subcommand prints on stderr for ``argv``, after checking that it returns 2."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1
    return err.strip()


# ---------------------------------------------------------------------------------------------------------------
# Options checked by argparse


COUNT_OPTIONS = [("demo", "--seeds"), ("demo", "--chunks"), ("demo", "--steps"), ("demo", "--repeats"),
                 ("analyze", "--steps"), ("analyze", "--repeats"), ("bench", "--repeats")]


@pytest.mark.parametrize(("command", "option"), COUNT_OPTIONS)
@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_count_below_one_or_not_a_whole_number_is_rejected(
    command: str, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _parse_error([command, option, value], capsys) == (
        f"hero-compile {command}: error: argument {option}: must be a whole number >= 1, got {value!r}")


@pytest.mark.parametrize("value", ["0.5", "0", "-2", "nan", "inf", "strong"])
def test_guidance_must_be_a_finite_number_of_at_least_one(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse_error(["demo", "--guidance", value], capsys) == (
        f"hero-compile demo: error: argument --guidance: must be a finite number >= 1, got {value!r}")


@pytest.mark.parametrize(("models", "unknown"), [("sdxl", "'sdxl'"), ("world,sdxl,flux", "'sdxl', 'flux'"),
                                                 ("world,", "''")])
def test_unknown_bench_models_are_named_with_the_choices(
    models: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _parse_error(["bench", "--models", models], capsys) == (
        f"hero-compile bench: error: argument --models: unknown model {unknown}; choose from world, dit, cogvideox")


def test_weights_must_be_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing, file = tmp_path / "missing", tmp_path / "weights.safetensors"
    file.write_text("")
    assert _parse_error(["demo", "--weights", str(missing)], capsys) == (
        f"hero-compile demo: error: argument --weights: folder {str(missing)!r} does not exist")
    assert _parse_error(["demo", "--weights", str(file)], capsys) == (
        f"hero-compile demo: error: argument --weights: {str(file)!r} is not a folder")


@pytest.mark.parametrize("command", ["demo", "analyze", "bench"])
def test_out_must_not_be_a_file(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "report.md"
    file.write_text("")
    assert _parse_error([command, "--out", str(file)], capsys) == (
        f"hero-compile {command}: error: argument --out: {str(file)!r} is a file, not a folder")
    assert _parse_error([command, "--out", str(file / "report")], capsys) == (
        f"hero-compile {command}: error: argument --out: cannot create {str(file / 'report')!r}: "
        f"{str(file)!r} is a file, not a folder")


def test_json_must_not_be_a_folder_nor_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "figures.json"
    file.write_text("")
    assert _parse_error(["demo", "--json", str(tmp_path)], capsys) == (
        f"hero-compile demo: error: argument --json: {str(tmp_path)!r} is a folder, not a file")
    assert _parse_error(["demo", "--json", str(file / "more" / "figures.json")], capsys) == (
        f"hero-compile demo: error: argument --json: cannot create {str(file / 'more' / 'figures.json')!r}: "
        f"{str(file)!r} is a file, not a folder")


def test_the_default_out_folder_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("hero-analysis").write_text("")
    assert _parse_error(["analyze", "json:loads"], capsys) == (
        "hero-compile analyze: error: argument --out: 'hero-analysis' is a file, not a folder")


def test_valid_values_reach_the_subcommand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, argparse.Namespace] = {}

    def record(args: argparse.Namespace, *_: Any) -> int:
        seen[args.command] = args
        return 0

    for command in ("_demo", "_analyze", "_bench"):
        monkeypatch.setattr(cli, command, record)
    json_path, strips = tmp_path / "new" / "figures.json", tmp_path / "strips"
    assert main(["demo", "--seeds", "64", "--steps", "1", "--guidance", "1", "--weights", str(tmp_path),
                 "--json", str(json_path), "--out", str(strips)]) == 0
    demo = seen["demo"]
    assert (demo.seeds, demo.steps, demo.guidance) == (64, 1, 1.0)
    assert (demo.weights, demo.json, demo.out) == (tmp_path, json_path, strips)
    assert main(["analyze"]) == 0
    assert (seen["analyze"].target, seen["analyze"].out, seen["analyze"].steps) == ("world", Path("hero-analysis"), 30)
    assert main(["bench"]) == 0
    assert seen["bench"].models == ["world", "dit", "cogvideox"] and seen["bench"].repeats is None
    assert main(["bench", "--models", "dit, world,dit"]) == 0
    assert seen["bench"].models == ["dit", "world"]  # each once, in the order given


@pytest.mark.parametrize("command", ["demo", "analyze", "bench"])
def test_help_shows_the_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    expected = {"demo": ["(default: 2)", "(default: 30)", "(default: the world model's own)"],
                "analyze": ["(default: hero-analysis)", "(default: world)", "(default: inductor)"],
                "bench": ["(default: world,dit,cogvideox)", "(default: hero-bench)", "default: 3, 1 with --quick"]}
    assert all(snippet in text for snippet in expected[command])


# Every help in a fresh interpreter, through the module's own entry (what ``python -m hero_compile.cli`` runs).
HELP_WITHOUT_TORCH = """
import contextlib, io, json, runpy, sys
for argv in (["--help"], ["demo", "--help"], ["analyze", "--help"], ["bench", "--help"]):
    sys.argv = ["hero-compile", *argv]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        runpy.run_module("hero_compile.cli", run_name="__main__")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "hero_world", "hero_bench"))))
"""


def test_help_imports_neither_torch_nor_the_tools() -> None:
    # --help must answer at once: torch alone takes seconds to import.
    done = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, timeout=60,
                          check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------------------------------------------------
# Errors found by the subcommand, before any work


@pytest.mark.parametrize(("target", "message"), [
    ("nope:make", "cannot import module 'nope' for target 'nope:make' (No module named 'nope')"),
    ("json:nope", "module 'json' has no factory 'nope'"),
    ("test_cli:raising_factory", "test_cli:raising_factory() raised ValueError: no such model size"),
    ("test_cli:not_a_factory", "test_cli:not_a_factory is not callable (type int)"),
    ("test_cli:returns_none", "test_cli:returns_none() must return (model, example_inputs[, sampler])"),
    ("nope", "target 'nope' must be 'world' or package.module:factory"),
    (":make", "target ':make' must be 'world' or package.module:factory"),
    ("json:", "target 'json:' must be 'world' or package.module:factory"),
])
def test_a_bad_analysis_target_is_one_line(target: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _command_error(["analyze", target], capsys) == f"hero-compile analyze: {message}"


def test_a_target_module_that_fails_to_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "hero_cli_broken_target.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _command_error(["analyze", "hero_cli_broken_target:make"], capsys) == (
        "hero-compile analyze: cannot import module 'hero_cli_broken_target' for target "
        "'hero_cli_broken_target:make' (RuntimeError: needs a GPU)")


def test_missing_world_model_weights_for_analyze_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hero_world.target
    from hero_world.checkpoint import WeightsError

    def no_weights(**_: Any) -> Any:
        raise WeightsError("world-model weights not found at /nowhere/world_model.safetensors")

    monkeypatch.setattr(hero_world.target, "world_model_target", no_weights)
    assert _command_error(["analyze"], capsys) == (
        "hero-compile analyze: world-model weights not found at /nowhere/world_model.safetensors")


def test_more_seeds_than_held_out_mazes_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _command_error(["demo", "--seeds", "65"], capsys) == (
        "hero-compile demo: --seeds 65 is more than the 64 held-out mazes")
