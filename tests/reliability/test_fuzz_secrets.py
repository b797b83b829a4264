"""Secrets of every length 1..64 never corrupt the record, and never show in a stored
message when they are long enough to scrub.

Each case reveals a secret (a probe header and a backend token read from
{fromEnv: PROBE_TOKEN}, as a real plan does), then runs a failover and a requested
failback through the Engine with messages full of the secret (probe details, a backend
that puts it in its errors and evidence, a person's request). At every length, two
secrets are random text and two are cut from the record's own text (step names, run
ids, timestamps, JSON): the secrets most likely to corrupt it. Checked each time:

- the record reads back intact: every non-message column and field (step definitions,
  names, ids, timestamps, evidence data, policy counters) equals a control run's, made
  with no secret known (every decision of the control run is there unchanged), and a
  restarted Engine ticks on it;
- 8+ characters: the secret appears in no stored message; 4-7: in none as a word;
  1-3: revealing it is refused, naming where it came from.

Counted in the reliability summary: `redaction cases tried/record intact`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from controller import notices, testing, traffic
from controller.backends import Backends
from controller.journal import _MESSAGE_KEYS, Journal
from controller.loop import Clock, Engine
from controller.model import Evidence, PermanentError, Phase, Sample, Weights
from controller.plan import FailoverPlan, parse_plan
from controller.probing import observe
from controller.secrets import MIN_LENGTH, SAFE_LENGTH, SecretError, SecretRef, Secrets, forget
from tests.reliability.conftest import TALLY
from tests.reliability.test_fuzz import BASE

SERVICES = ("web", "api", "hotline")
START = 1_797_000_000.0  # digits a short numeric secret can match
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # fsync-free: many cases


class VaultOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    token: SecretRef


class LeakyVault(traffic.TrafficBackend):
    """A traffic backend whose library puts its credential into every error and note."""

    Options = VaultOptions

    def __init__(self, options: VaultOptions, *, secrets: Secrets):
        self.token = secrets.reveal(options.token)

    def current(self) -> Weights:
        return {"dc-a": 100, "dc-b": 0}

    def snapshot(self) -> Evidence:
        return {"weights": self.current(), "detail": f"read with token {self.token}"}

    def shift(self, *, to: str, weights: Weights) -> Evidence:
        raise PermanentError(f"vault refused token {self.token} (401): token={self.token}")

    def revert(self, *, to: Weights, snapshot: Evidence | None = None) -> Evidence:
        raise PermanentError(f"vault refused the revert for {self.token}")


@pytest.fixture(scope="module", autouse=True)
def _vault_kind() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(traffic.KINDS, "leaky-vault", f"{__name__}:LeakyVault")
        yield


def fuzz_plan() -> FailoverPlan:
    data = copy.deepcopy(BASE)
    spec = data["spec"]
    spec["services"][2]["probes"].append({"kind": "http", "options": {
        "url": "http://127.0.0.1:9/health",
        "secretHeaders": {"Authorization": {"fromEnv": "PROBE_TOKEN"}}}})
    spec["backends"].append({"name": "vault", "role": "traffic", "kind": "leaky-vault",
                             "options": {"token": {"fromEnv": "PROBE_TOKEN"}}})
    spec["steps"].insert(2, {"name": "rotate-keys", "action": "traffic", "backend": "vault",
                             "onFailure": "continue",
                             "params": {"to": "dc-b", "weights": {"dc-b": 100, "dc-a": 0}}})
    return parse_plan(data)


def scenario(directory: Path, secret: str) -> Path:
    """A failover and a requested failback with `secret` in the messages; the journal."""
    testing.reset()
    plan = fuzz_plan()
    clock = testing.FakeClock(START)
    backends = Backends(plan)
    observe(plan, backends)
    path = directory / "journal.db"
    journal = Journal(path)
    engine = Engine(plan, journal, backends=backends, holder="fuzz", backoff=0.0,
                    clock=Clock(now=clock.now, sleep=clock.sleep))
    testing.set_health("dc-a", False)
    for _ in range(15):
        clock.advance(0.2)
        engine.tick([Sample(s, False, clock.now(),
                            detail=f"HTTP 401: token {secret} rejected (token={secret})")
                     for s in SERVICES])
    engine.request("failback", actor="oncall", reason=f"dc-a is back; used {secret}")
    testing.set_health("dc-a", True)
    for _ in range(10):
        clock.advance(0.2)
        engine.tick([Sample(s, True, clock.now()) for s in SERVICES])
    backends.get("im").sent()  # notices go out off the step path: let them settle
    journal.close()
    again = Journal(path)  # a restarted controller reads the record back and goes on
    clock.advance(0.2)
    Engine(plan, again, backends=backends, holder="fuzz", backoff=0.0,
           clock=Clock(now=clock.now, sleep=clock.sleep)).tick(
        [Sample(s, True, clock.now()) for s in SERVICES])
    backends.get("im").sent()
    again.close()
    return path


def _drop_messages(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_messages(v) for k, v in value.items() if k not in _MESSAGE_KEYS}
    if isinstance(value, list):
        return [_drop_messages(v) for v in value]
    return value


MESSAGE_COLUMNS = {("runs", "reason"), ("runs", "outcome"), ("steps", "error"),
                   ("decisions", "sentence"), ("plan_state", "last_decision"),
                   ("requests", "reason"), ("audit", "detail")}
JSON_COLUMNS = {("runs", "steps_json"), ("steps", "evidence"), ("plan_state", "policy"),
                ("plan_state", "readiness")}
VOLATILE = {("leases", "token"), ("leases", "expires_at")}


def record(path: Path) -> tuple[dict[str, list[Any]], list[str]]:
    """(every table's rows without their messages and with run ids numbered, the stored
    messages), read with plain SQLite: what is on disk, not what the Journal makes of it."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    ids = {r["id"]: f"run-{i}" for i, r in enumerate(
        db.execute("SELECT id FROM runs ORDER BY started_at, kind"))}
    rename = re.compile("|".join(map(re.escape, ids)) or "(?!)")
    data: dict[str, list[Any]] = {}
    messages: list[str] = []
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                               "name NOT IN ('sqlite_sequence', 'meta')"):
        rows = []
        for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid"):
            kept = {}
            for column in row.keys():  # noqa: SIM118 (sqlite3.Row)
                value = row[column]
                if (table, column) in MESSAGE_COLUMNS:
                    messages.append(value or "")
                elif (table, column) in JSON_COLUMNS:
                    doc = json.loads(value)
                    messages += _messages_in(doc)
                    kept[column] = _drop_messages(doc)
                elif (table, column) not in VOLATILE:
                    kept[column] = value
            rows.append(json.loads(rename.sub(lambda m: ids[m.group()], json.dumps(kept))))
        if table == "audit":  # notices are sent and recorded from their own thread, so
            # their order and time vary from run to run: compare what was recorded
            rows = sorted(({k: v for k, v in r.items() if k != "id" and not (
                k == "at" and str(r["action"]).startswith("notify"))} for r in rows),
                key=lambda r: json.dumps(r, sort_keys=True))
        if table == "decisions":
            rows = [{k: v for k, v in r.items() if k != "id"} for r in rows]
        data[table] = rows
    db.close()
    return data, messages


def _messages_in(value: Any, message: bool = False) -> list[str]:
    if isinstance(value, str):
        return [value] if message else []
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _messages_in(v, message
                                                                   or k in _MESSAGE_KEYS)]
    if isinstance(value, list):
        return [m for v in value for m in _messages_in(v, message)]
    return []


def as_word(secret: str, text: str) -> bool:
    """`secret` in `text` with no letter, digit, _ or - touching it (nor a . on its left,
    nor a . and more of a word on its right): how a 4-7 character secret is scrubbed."""
    return re.search(rf"(?<![\w.-]){re.escape(secret)}(?![\w-]|\.[\w-])", text) is not None


TAG = re.compile(r"\[notice [0-9a-f]{16}\]")


@functools.cache
def routes() -> list[str]:
    return sorted({notices.route(r) for r in fuzz_plan().spec.notifications}, key=len,
                  reverse=True)


def without_ids(message: str) -> str:
    """A stored message without the ids it carries verbatim (notice tags and routes: an
    audit detail's `keep`), which are not redacted by design."""
    for route in routes():
        message = message.replace(route, "\n")
    return TAG.sub("\n", message)


_CONTROL: dict[str, Any] = {}


def control() -> tuple[dict[str, list[Any]], str]:
    """The control run (no secret known) and the text of its record, computed once."""
    if not _CONTROL:
        os.environ["PROBE_TOKEN"] = "control-token-value"
        try:
            with tempfile.TemporaryDirectory(dir=SHM) as tmp:
                path = scenario(Path(tmp), "<no secret>")
                data, _ = record(path)
                db = sqlite3.connect(path)
                text = "\n".join(str(v) for table in data for row in db.execute(
                    f"SELECT * FROM {table}") for v in row if v is not None)
                db.close()
        finally:
            forget("control-token-value")
        _CONTROL.update(data=data, text=text)
    return _CONTROL["data"], _CONTROL["text"]


@st.composite
def secrets_of(draw: st.DrawFn, length: int, source: str) -> str:
    """A secret of exactly `length` characters, no surrounding blanks: random printable
    text, or a piece of the record's own text (a step name, a run id, a timestamp, JSON)."""
    if source == "record":
        text = control()[1]
        pieces = {text[i:i + length] for i in range(len(text) - length)}
        return draw(st.sampled_from(sorted(p for p in pieces
                                           if p == p.strip() and "\n" not in p)))
    edge = st.characters(min_codepoint=33, max_codepoint=126)
    if length == 1:
        return draw(edge)
    middle = st.text(st.characters(min_codepoint=32, max_codepoint=126),
                     min_size=length - 2, max_size=length - 2)
    return draw(edge) + draw(middle) + draw(edge)


@pytest.mark.parametrize("source", ["random", "record"])
@pytest.mark.parametrize("length", range(1, 65))
@settings(max_examples=2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_secret_of_any_length_never_corrupts_the_record(length: int, source: str,
                                                          data: st.DataObject) -> None:
    expected, _ = control()
    secret = data.draw(secrets_of(length, source), label="secret")
    TALLY["redaction_tried"] += 1
    TALLY["fuzz_cases"] += 1
    os.environ["PROBE_TOKEN"] = secret
    try:
        with tempfile.TemporaryDirectory(dir=SHM) as tmp:
            if length < MIN_LENGTH:
                with pytest.raises(SecretError, match="environment variable PROBE_TOKEN is "
                                   f"{length} characters? long: too short"):
                    scenario(Path(tmp), secret)
                TALLY["redaction_intact"] += 1  # refused before anything was recorded
                return
            stored, messages = record(scenario(Path(tmp), secret))
        # intact: every name, id, number and datum as in the control run ...
        assert {t: v for t, v in stored.items() if t != "decisions"} == {
            t: v for t, v in expected.items() if t != "decisions"}
        # ... and every decision, unchanged; a secret cut across a sentence's label (its
        # text before the first colon, which the engine compares as stored, redacted) may
        # have a repeated `none` decision recorded again, never one lost or altered
        extra = [d for d in stored["decisions"] if d not in expected["decisions"]]
        assert [d for d in expected["decisions"] if d not in stored["decisions"]] == []
        assert all(d["action"] == "none" for d in extra), extra
        TALLY["redaction_intact"] += 1
        if length >= SAFE_LENGTH:
            assert not [m for m in messages if secret in without_ids(m)]
        else:
            assert not [m for m in messages if as_word(secret, without_ids(m))]
    finally:
        forget(secret)
        os.environ.pop("PROBE_TOKEN", None)


def test_the_fuzz_scenario_exercises_every_kind_of_message() -> None:
    """The control run really stores the secret's carriers: a failed step's error, a
    revert error in evidence, a failed read's detail, probe details in the policy, the
    request's reason, decision sentences and audit details, and a finished failback."""
    stored, _ = control()
    assert sorted(r["kind"] for r in stored["runs"]) == ["failback", "failover"]
    assert stored["plan_state"][0]["phase"] == Phase.HEALTHY.value
    steps = {s["name"]: s for s in stored["steps"]}
    assert steps["rotate-keys"]["status"] == "failed"
    with tempfile.TemporaryDirectory(dir=SHM) as tmp:
        os.environ["PROBE_TOKEN"] = "carrier-token-1234"
        try:
            _, messages = record(scenario(Path(tmp), "carrier-token-1234"))
        finally:
            forget("carrier-token-1234")
            os.environ.pop("PROBE_TOKEN", None)
    carriers = [m for m in messages if "***" in m]
    assert any("vault refused token ***" in m for m in carriers)  # a step's error
    assert any("read with token ***" in m for m in carriers)  # evidence detail
    assert any("token=***" in m for m in carriers)  # probe details, sentences
    assert any("used ***" in m for m in carriers)  # the request's reason
