"""The test harness's own signals can fire: a check that never fails guards nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_no_recompiles, fresh_dynamo, recompile_report
from models import StackModel

TESTS = Path(__file__).resolve().parent


def test_the_recompile_check_fires_when_a_shape_change_recompiles() -> None:
    compiled = torch.compile(StackModel(), backend="aot_eager", dynamic=False)
    fresh_dynamo()
    with torch.no_grad():
        compiled(torch.randn(1, 8, 4), torch.ones(1))
        assert_no_recompiles(recompile_report())
        compiled(torch.randn(1, 12, 4), torch.ones(1))
    report = recompile_report()
    assert report["unique_graphs"] == 2 and report["guard_failures"], report
    with pytest.raises(AssertionError):
        assert_no_recompiles(report)


@pytest.mark.parametrize(("ci", "status"), [("true", 1), ("", 0)])
def test_a_skipped_module_fails_the_run_under_ci(tmp_path: Path, ci: str, status: int) -> None:
    """A module skipped for a missing dependency (``pytest.importorskip("diffusers")``) must not pass CI unseen."""
    (tmp_path / "test_needs_missing.py").write_text(
        'import pytest\npytest.importorskip("hero_no_such_module")\n\ndef test_never_runs():\n    pass\n')
    (tmp_path / "test_runs.py").write_text("def test_runs():\n    pass\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == status, done.stdout
