"""The test harness's own signals can fire: a check that never fails guards nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_no_recompiles, fresh_dynamo, recompile_report
from models import StackModel


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
