"""A drill pointed at real systems (probes that are not the in-memory fakes) causes no
outage: it requests a planned failover, then fails back, and it fails back even when it is
stopped midway. The services are probed over real HTTP; traffic and DNS are the fakes,
read back to show nothing is left switched."""

from __future__ import annotations

import copy
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import testing
from controller.drill.runner import Interrupted, run_drill
from controller.journal import Journal
from controller.model import Phase
from controller.plan import FailoverPlan, parse_plan
from tests.e2e.test_cli import EXAMPLE

ORIGINAL = {"dc-a": 100, "dc-b": 0}


@pytest.fixture
def service() -> Iterator[str]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/health"
    server.shutdown()
    server.server_close()


def real_probed_plan(url: str) -> FailoverPlan:
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    for svc in data["spec"]["services"]:
        svc["probes"] = [{"kind": "http", "options": {"url": url, "timeout": "1s"}}]
    return parse_plan(data)


def world(plan: FailoverPlan) -> tuple[dict[str, int], tuple[str, ...]]:
    edge = testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(key="edge"))
    zone = testing.FakeDnsProvider(testing.FakeDnsProvider.Options.model_validate(
        next(b.options for b in plan.spec.backends if b.name == "zone")))
    return edge.current(), zone.records()[0].values


def test_planned_drill_fails_over_and_back_without_an_outage(
        service: str, journal: Journal, tmp_path: Path) -> None:
    plan = real_probed_plan(service)
    lines: list[str] = []
    verdict = run_drill(plan, journal, tmp_path / "out", echo=lines.append)
    assert verdict["passed"], verdict["checks"]
    assert any("planned failover" in line for line in lines)
    failover, failback = journal.runs(plan.name, limit=2)[::-1]
    assert (failover.kind, failover.requested_by, failover.phase) == (
        "failover", "drill", Phase.FAILED_OVER)
    assert (failback.kind, failback.phase) == ("failback", Phase.HEALTHY)
    assert world(plan) == (ORIGINAL, ("192.0.2.10",))
    assert (tmp_path / "out" / "verdict.json").exists()


def test_a_drill_stopped_midway_still_fails_back(
        service: str, journal: Journal, tmp_path: Path) -> None:
    plan = real_probed_plan(service)

    def stop() -> str | None:  # SIGTERM arrives once traffic is on the backup site
        return "SIGTERM" if world(plan)[0] == {"dc-a": 0, "dc-b": 100} else None

    with pytest.raises(Interrupted):
        run_drill(plan, journal, tmp_path / "out", echo=None, stop=stop)
    assert world(plan) == (ORIGINAL, ("192.0.2.10",))
    last = journal.runs(plan.name, limit=1)[0]
    assert (last.kind, last.phase) == ("failback", Phase.HEALTHY)
    assert journal.plan_state(plan.name).phase is Phase.HEALTHY  # type: ignore[union-attr]
