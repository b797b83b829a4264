"""A service's probe timeout against its interval (issue 21, item 9).

Rounds of one service never overlap (the scheduler skips the slots a long round missed),
so a timeout longer than the interval cannot be honoured without stretching the interval:
`interval: 200ms, timeout: 5s` would sample a hung service once per 5 s, and detection
(consecutiveFailures x interval) would take 25 times what the plan says. It used to be cut
to the interval without a word. Now `validate` refuses it, naming the field and the fix;
a plan that leaves the timeout out gets min(5 s, interval), which is what it always got.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from controller.backends import Backends
from controller.cli import main
from controller.model import Sample
from controller.plan import PlanError, parse_plan
from controller.probes import Probe
from controller.probes.scheduler import ProbeScheduler, targets_from_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())


def plan_with(**service: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["spec"]["services"][1].update(service)
    return data


def test_a_timeout_longer_than_the_interval_is_refused_naming_field_and_fix() -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(plan_with(interval="200ms", timeout="5s"))
    [problem] = err.value.problems
    assert problem.startswith("spec.services[1].timeout: 5s is longer than the interval "
                              "0.2s"), problem
    assert "at most 0.2s" in problem and "raise interval to at least 5s" in problem


def test_validate_exits_2_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan_with(interval="1s", timeout="2s")))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "spec.services[1].timeout: 2s is longer than the interval 1s" in result.output


@pytest.mark.parametrize(("service", "expected"), [
    ({"interval": "200ms"}, 0.2),                 # default 5 s, shortened to the interval
    ({"interval": "30s"}, 5.0),                   # default 5 s
    ({"interval": "2s", "timeout": "2s"}, 2.0),   # equal is fine
    ({"interval": "10s", "timeout": "1500ms"}, 1.5),
])
def test_allowed_timeouts_are_used_as_written(service: dict[str, Any], expected: float) -> None:
    plan = parse_plan(plan_with(**service))
    assert plan.spec.services[1].timeout == expected
    targets = {t.service: t for t in targets_from_plan(plan, Backends(plan).probe)}
    assert targets[plan.spec.services[1].name].timeout == expected


def test_the_timeout_written_is_the_timeout_applied() -> None:
    """A hung probe of a service with interval 1 s and timeout 600 ms gives up at 0.6 s."""
    plan = parse_plan(plan_with(interval="1s", timeout="600ms"))

    class Hung(Probe):
        service = plan.spec.services[1].name

        async def check(self) -> Sample:
            await asyncio.Event().wait()
            raise AssertionError("never answers")

    [target] = [t for t in targets_from_plan(plan, lambda owner, spec: Hung())
                if t.service == Hung.service]
    started = time.monotonic()
    [sample] = asyncio.run(ProbeScheduler([target]).run_once())
    took = time.monotonic() - started
    assert not sample.ok and "timed out after 0.6 s" in sample.detail
    assert 0.55 < took < 0.9
