"""Secrets seeded into a backend's config never appear in logs, the journal, status,
reports or exceptions — even when the backend's library echoes them in its errors."""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from controller import report, testing, traffic
from controller.backends import Backends
from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Phase, Sample, StepStatus
from controller.plan import FailoverPlan, parse_plan
from controller.probing import observe, probe_once
from controller.secrets import (
    MASK,
    RedactingFilter,
    SecretError,
    SecretRef,
    Secrets,
    forget,
    redact,
)
from controller.testing import FakeClock
from tests.reliability.conftest import TALLY
from tests.unit.test_engine import BASE

SECRET = "s3cr3t-T0KEN-4f9a2c"


class LeakyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    token: SecretRef


class LeakyTrafficBackend(traffic.TrafficBackend):
    """Behaves like a client library that puts the credential into its error messages."""

    Options = LeakyOptions

    def __init__(self, options: LeakyOptions, *, secrets: Secrets):
        self.token = secrets.reveal(options.token)

    def current(self) -> dict[str, int]:
        return {"dc-a": 100, "dc-b": 0}

    def snapshot(self) -> dict[str, Any]:
        return {"weights": self.current()}

    def shift(self, *, to: str, weights: dict[str, int]) -> dict[str, Any]:
        logging.getLogger("leaky").warning("calling https://api/?token=%s", self.token)
        raise ConnectionError(f"401 for https://edge.example/api?token={self.token}")

    def revert(self, *, to: dict[str, int]) -> dict[str, Any]:
        raise PermissionError(f"revert refused for token {self.token}")


def test_no_secret_reaches_any_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EDGE_TOKEN", SECRET)
    monkeypatch.setitem(traffic.KINDS, "leaky", f"{__name__}:LeakyTrafficBackend")
    data = copy.deepcopy(BASE)
    data["spec"]["backends"][0] = {"name": "edge", "role": "traffic", "kind": "leaky",
                                   "options": {"token": {"fromEnv": "EDGE_TOKEN"}}}
    plan = parse_plan(data)
    caplog.handler.addFilter(RedactingFilter())
    clock = FakeClock()
    journal = Journal(tmp_path / "j.db")
    engine = Engine(plan, journal, backends=Backends(plan), holder="t", backoff=0.0,
                    clock=Clock(now=clock.now, sleep=clock.sleep))
    with caplog.at_level(logging.DEBUG):
        for _ in range(10):
            clock.advance(0.2)
            state = engine.tick([Sample(s, False, clock.now(), detail=f"token={SECRET}")
                                 for s in ("web", "api", "hotline")])
    assert state.phase is Phase.FAILED
    run = journal.runs()[0]
    rep = report.build(journal, run.id)
    outputs = {
        "logs": caplog.text,
        "status": json.dumps(engine.state().__dict__, default=str),
        "report-json": report.to_json(rep),
        "report-junit": report.to_junit(rep),
        "report-markdown": report.to_markdown(rep),
        "step errors": " ".join(s.error or "" for s in journal.steps(run.id)),
        "decisions": json.dumps(journal.decisions(plan.name)),
    }
    journal.close()
    for path in tmp_path.glob("j.db*"):  # the database, its WAL and shared memory
        outputs[path.name] = path.read_bytes().decode("latin-1")
    assert "token=***" in outputs["step errors"]  # the error is kept, the value is not
    leaks = [where for where, text in outputs.items() if SECRET in text]
    TALLY["secret_paths"] += len(outputs)
    TALLY["secrets_leaked"] += len(leaks)
    assert leaks == []


# --- a short secret never corrupts the record ---------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """A site that is down: answers 503 and keeps each request's probe token."""

    tokens: list[str] = []

    def do_GET(self) -> None:
        type(self).tokens.append(self.headers.get("X-Probe-Token", ""))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def down_site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.tokens = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _token_plan(url: str) -> FailoverPlan:
    """The memory drill (its last step is `link-test`) with a real HTTP probe whose
    header is read from {fromEnv: PROBE_TOKEN}."""
    data = copy.deepcopy(BASE)
    data["spec"]["services"][2]["probes"].append({"kind": "http", "options": {
        "url": url, "secretHeaders": {"X-Probe-Token": {"fromEnv": "PROBE_TOKEN"}}}})
    return parse_plan(data)


def _messages(journal: Journal, plan: str) -> list[str]:
    """Every message the journal stores for the plan (the fields redaction applies to)."""
    out = [d["sentence"] for d in journal.decisions(plan, limit=1000)]
    out += [a["detail"] for a in journal.audit_trail(plan=plan)]
    state = journal.plan_state(plan)
    assert state is not None
    out += [state.last_decision or ""]
    out += [s["last_detail"] for s in state.policy.get("services", {}).values()]
    for run in journal.runs(plan, limit=100):
        out += [run.reason, run.outcome or ""]
        out += [s.error or "" for s in journal.steps(run.id)]
    return out


@pytest.mark.parametrize(("secret", "start"), [("test", 1_700_000_000.0),
                                               ("7000", 1_797_000_000.0)])
def test_a_short_probe_secret_leaves_the_record_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        down_site: str, secret: str, start: float) -> None:
    """Reproduction (issue 21): PROBE_TOKEN=test and a step named link-test stored the
    run's steps as `link-***` and every tick failed; PROBE_TOKEN=7000 turned the
    timestamp 1797000000.0 into 179***000.0 and plan_state() raised."""
    monkeypatch.setenv("PROBE_TOKEN", secret)
    plan = _token_plan(down_site)
    clock = FakeClock(start)
    backends = Backends(plan)
    try:
        with caplog.at_level(logging.WARNING, logger="controller.secrets"):
            observe(plan, backends)  # builds every probe, as `failoverctl run` does
        assert "environment variable PROBE_TOKEN is only 4 characters" in caplog.text
        samples = probe_once(plan, backends, services=["hotline"])
        assert _Recorder.tokens == [secret]  # the real probe sent the revealed header
        assert "status 503" in samples[0].detail
        journal = Journal(tmp_path / "j.db")
        engine = Engine(plan, journal, backends=backends, holder="t", backoff=0.0,
                        clock=Clock(now=clock.now, sleep=clock.sleep))
        testing.set_health("dc-a", False)
        for _ in range(15):
            clock.advance(0.2)
            state = engine.tick([Sample(s, False, clock.now(), detail=f"HTTP 401: token "
                                        f"{secret} rejected at {clock.now()}")
                                 for s in ("web", "api", "hotline")])
        assert state.phase is Phase.FAILED_OVER
        run = journal.runs(plan.name)[0]
        names = [s.name for s in plan.spec.steps]
        assert [s["name"] for s in run.steps] == names  # `link-test` stays `link-test`
        assert [s.name for s in journal.steps(run.id)] == names
        assert all(s.status is StepStatus.SUCCEEDED for s in journal.steps(run.id))
        assert run.started_at > run.detected_at > start  # timestamps exact, not mangled
        assert journal.decisions(plan.name)[-1]["at"] <= clock.now()
        journal.close()
        # a restarted controller reads it all back and goes on ticking
        journal = Journal(tmp_path / "j.db")
        again = Engine(plan, journal, backends=backends, holder="t", backoff=0.0,
                       clock=Clock(now=clock.now, sleep=clock.sleep))
        clock.advance(0.2)
        assert again.tick([Sample(s, True, clock.now()) for s in ("web", "api", "hotline")]
                          ).phase is Phase.FAILED_OVER
        assert journal.runs(plan.name)[0].steps == run.steps
        messages = _messages(journal, plan.name)
        assert any(f"token {MASK} rejected" in m for m in messages)  # the word is scrubbed
        assert not [m for m in messages if f"token {secret} " in m]
        journal.close()
    finally:
        forget(secret)


def test_a_secret_too_short_to_scrub_is_refused_naming_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch, down_site: str) -> None:
    monkeypatch.setenv("PROBE_TOKEN", "ab7")
    plan = _token_plan(down_site)
    with pytest.raises(SecretError) as err:
        observe(plan, Backends(plan))
    assert "secret environment variable PROBE_TOKEN" in str(err.value)
    assert "3 characters" in str(err.value) and "at least 8" in str(err.value)
    assert "ab7" not in str(err.value)
    assert redact("token ab7") == "token ab7"  # refused, so never half-remembered
