"""Secrets seeded into a backend's config never appear in logs, the journal, status,
reports or exceptions — even when the backend's library echoes them in its errors."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from controller import report, traffic
from controller.backends import Backends
from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Phase, Sample
from controller.plan import parse_plan
from controller.secrets import RedactingFilter, SecretRef, Secrets
from controller.testing import FakeClock
from tests.reliability.conftest import TALLY
from tests.unit.test_engine import BASE

SECRET = "s3cr3t-T0KEN-4f9a2c"


class LeakyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    token: SecretRef


class LeakyTrafficBackend:
    """Behaves like a client library that puts the credential into its error messages."""

    Options = LeakyOptions

    def __init__(self, options: LeakyOptions, *, secrets: Secrets):
        self.token = secrets.reveal(options.token)

    def current(self) -> dict[str, int]:
        return {"dc-a": 100, "dc-b": 0}

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
