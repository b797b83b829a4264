"""In-memory fakes of every protocol, for unit tests of pure logic and for users' own tests.

Each fake keeps the same contract as its real counterpart (the contract suites under
`tests/contract/` run both through the same tests). State lives in a process-wide dict
keyed by `key`, or in a JSON file when `stateFile` is set, so a drill can inject a fault
from one process and a controller in another process sees it.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups import BackupStore, DamagedBackup, Restorer
from controller.dns import DnsConflict, DnsProvider
from controller.model import (
    Backup,
    Evidence,
    Notice,
    PermanentError,
    Record,
    Sample,
    Target,
    Weights,
)
from controller.notify import Notifier
from controller.probes import Probe
from controller.traffic import TrafficBackend

log = logging.getLogger(__name__)

_MEMORY: dict[str, dict[str, Any]] = {}
_LOCK = threading.RLock()


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    key: str = "default"
    state_file: str | None = Field(None, alias="stateFile")


@contextmanager
def _state(opts: FakeOptions, namespace: str) -> Iterator[dict[str, Any]]:
    """Read-modify-write the fake's state (a JSON file, or process memory).

    A file is shared by processes (a test injects a fault while a controller probes), so
    each read-modify-write holds an exclusive `flock` on a sibling lock file, and a pure
    read writes nothing back; otherwise a reader's stale copy could undo a fault.
    """
    with _LOCK:
        if opts.state_file is None:
            yield _MEMORY.setdefault(f"{namespace}:{opts.key}", {})
            return
        path = Path(opts.state_file)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            before = path.read_text() if path.exists() else "{}"
            data = json.loads(before)
            section = data.setdefault(f"{namespace}:{opts.key}", {})
            yield section
            after = json.dumps(data, indent=1, sort_keys=True)
            if after == before:
                return
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as fh:
                fh.write(after)
            os.replace(tmp, path)


def _fenced(st: dict[str, Any], what: str) -> tuple[int | None, str | None]:
    """Before a fake writes (under its state lock): check the step's fence, and refuse a
    token older than one this target accepted (`fencing.StaleToken`), as a fencing-aware
    target does. Returns (token, holder) to record with the write; outside a step (no
    token) the write is accepted."""
    fencing.check()
    token, holder = fencing.token(), fencing.holder()
    highest = st.get("maxToken")
    if token is not None and highest is not None and token < highest:
        raise fencing.StaleToken(f"{what}: fencing token {token} ({holder}) is older than "
                                 f"token {highest} already accepted; another controller "
                                 "holds the plan now")
    if token is not None:
        st["maxToken"] = token if highest is None else max(token, highest)
    return token, holder


def reset() -> None:
    """Forget all in-memory fake state (call between tests); first let the notices still
    going out (controller.outbox) land, so none lands in the next test's fakes."""
    from controller.outbox import settle

    settle()
    with _LOCK:
        _MEMORY.clear()


# --- clock -------------------------------------------------------------------------------


class FakeClock:
    """An injected clock: `now()` only moves when `advance`/`sleep` is called."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


# --- probes --------------------------------------------------------------------------------


class FakeProbeOptions(FakeOptions):
    up: bool = True
    value: float | None = None
    traffic: str | None = Field(None, description="key of a FakeTrafficBackend to follow")
    timeout: float = Field(5.0, description="seconds a check waits for a service that "
                                            "does not answer (`ProbeFault.HANG`)")


class ProbeFault(enum.Enum):
    """How a service the fake probes fails, beyond answering "down" (`set_health`)."""

    HANG = "hang"  # accepts the check and never answers: the check times out
    UNREACHABLE = "unreachable"  # cannot be reached at all


class FakeProbe(Probe):
    """Answers from shared state: `set_health(key, False)` makes every probe on `key` fail,
    `set_fault(key, ProbeFault.HANG)` makes it time out after its `timeout`, like a real
    probe of a service that never answers, and `ProbeFault.UNREACHABLE` fail at once.

    With `traffic:` it models a service behind an edge: it is up when the destination
    receiving the most traffic weight (a site name) is up, so a fault injected into the
    primary site clears once traffic has moved to the backup.
    """

    Options = FakeProbeOptions

    def __init__(self, options: FakeProbeOptions, *, secrets: Any = None, service: str = ""):
        self.options, self.service = options, service

    async def check(self) -> Sample:
        key = self.options.key
        if self.options.traffic is not None:
            edge = FakeOptions(key=self.options.traffic, state_file=self.options.state_file)
            with _state(edge, "traffic") as st:
                weights = st.get("weights")
            if weights:
                key = max(weights, key=lambda d: weights[d])
        with _state(self.options.model_copy(update={"key": key}), "probe") as st:
            up = bool(st.get("up", self.options.up))
            value = st.get("value", self.options.value)
            fault = st.get("fault")
        at = time.time()
        if fault == ProbeFault.HANG.value:
            await asyncio.sleep(self.options.timeout)
            return Sample(self.service, False, at, latency=self.options.timeout,
                          detail=f"{key}: timed out after {self.options.timeout:g} s")
        if fault == ProbeFault.UNREACHABLE.value:
            return Sample(self.service, False, at, detail=f"{key}: unreachable (injected)")
        detail = f"via {key}" if up else f"{key}: fault injected"
        return Sample(self.service, up, at, latency=0.0, detail=detail, value=value)


def set_health(key: str, up: bool, *, state_file: str | None = None,
               value: float | None = None) -> None:
    """Inject (up=False) or clear a fault for every FakeProbe sharing `key`."""
    with _state(FakeOptions(key=key, state_file=state_file), "probe") as st:
        st["up"] = up
        if value is not None:
            st["value"] = value


def set_fault(key: str, fault: ProbeFault | None, *, state_file: str | None = None) -> None:
    """Make every FakeProbe sharing `key` hang or be unreachable; None clears the fault."""
    with _state(FakeOptions(key=key, state_file=state_file), "probe") as st:
        if fault is None:
            st.pop("fault", None)
        else:
            st["fault"] = fault.value


# --- traffic -------------------------------------------------------------------------------


class FakeTrafficOptions(FakeOptions):
    weights: dict[str, int] = Field(default_factory=lambda: {"primary": 100, "backup": 0})
    fail_shifts: int = Field(0, alias="failShifts", description="fail this many shifts first")
    delay: float = Field(0.0, description="seconds each shift takes before it writes "
                         "(a `fencing.pause`: cancellable, simulated under a simulated clock)")


class FakeTrafficBackend(TrafficBackend):
    """Weights in shared state, with the real backends' rules (target first, idempotent
    revert) and a fenced target's: every write checks the step's fence first and is
    recorded with its fencing token and holder (`writes()`); a write whose token is
    smaller than the largest one accepted before is refused with `fencing.StaleToken`."""

    Options = FakeTrafficOptions

    def __init__(self, options: FakeTrafficOptions, *, secrets: Any = None):
        self.options = options

    def current(self) -> Weights:
        with _state(self.options, "traffic") as st:
            return dict(st.get("weights", self.options.weights))

    def snapshot(self) -> Evidence:
        return {"weights": self.current()}

    def _set(self, weights: Weights) -> None:
        with _state(self.options, "traffic") as st:
            token, holder = _fenced(st, f"memory traffic {self.options.key}")
            st["weights"] = dict(weights)
            st["calls"] = st.get("calls", 0) + 1
            st.setdefault("writes", []).append(
                {"weights": dict(weights), "token": token, "holder": holder})

    def _known(self, before: Weights, weights: Weights) -> None:
        unknown = set(weights) - set(before)
        if unknown:
            raise PermanentError(f"unknown destinations {sorted(unknown)}; have {sorted(before)}")

    def shift(self, *, to: str, weights: Weights) -> Evidence:
        before = self.current()
        if to not in weights:  # like the real backends: the target must be given a weight
            raise PermanentError(f"weights {dict(weights)} give the target {to!r} no weight; "
                                 f"add {to!r} to them")
        self._known(before, weights)
        if self.options.delay:
            fencing.pause(self.options.delay)
        with _state(self.options, "traffic") as st:
            if st.get("failed", 0) < self.options.fail_shifts:
                st["failed"] = st.get("failed", 0) + 1
                raise ConnectionError("injected traffic backend failure")
        # enable the target first, then drain the others (two writes, like the real ones),
        # writing nothing that is already so (a re-run shift writes nothing)
        now = before
        for state in ({**before, to: weights[to]}, {**before, **weights}):
            if state != now:
                self._set(state)
                now = state
        return {"before": before, "after": self.current(), "to": to}

    def revert(self, *, to: Weights, snapshot: Evidence | None = None) -> Evidence:
        """The weights are the whole state of the fake: the snapshot adds nothing."""
        before = self.current()
        self._known(before, to)
        if {**before, **to} != before:  # nothing to write when already there
            self._set({**before, **to})
        return {"before": before, "after": self.current()}

    def calls(self) -> int:
        with _state(self.options, "traffic") as st:
            return int(st.get("calls", 0))

    def writes(self) -> list[dict[str, Any]]:
        """Every write in order: {weights, token, holder} (token/holder None outside a
        step)."""
        with _state(self.options, "traffic") as st:
            return [dict(w) for w in st.get("writes", [])]


# --- DNS -------------------------------------------------------------------------------


class FakeDnsOptions(FakeOptions):
    records: list[dict[str, Any]] = Field(default_factory=list)
    fail: bool = Field(False, description="every apply fails as if the server were unreachable")
    fail_verify: bool = Field(False, alias="failVerify",
                              description="every verify fails as if a secondary did not "
                                          "serve the records in time")


def _same_values(a: Record | None, b: Record | None) -> bool:
    return set(a.values if a else ()) == set(b.values if b else ())


class FakeDnsProvider(DnsProvider):
    """Compare-and-swap semantics of RFC 2136 prerequisites, in memory.

    A fencing-aware target: each write is recorded with the step attempt's fencing token
    and holder (`writes()`), and a write whose token is smaller than the largest token
    already accepted is refused (`fencing.StaleToken`), so a deposed holder whose work
    could not be stopped still cannot overwrite the new holder's records. A write made
    outside any step (token None: a person, a test seeding records) is accepted.
    """

    Options = FakeDnsOptions

    def __init__(self, options: FakeDnsOptions, *, secrets: Any = None):
        self.options = options

    def _load(self, st: dict[str, Any]) -> dict[tuple[str, str], Record]:
        raw = st.setdefault("records", [dict(r) for r in self.options.records])
        recs = (Record.from_json({"ttl": 300, **r}) for r in raw)
        return {r.key(): r for r in recs}

    @staticmethod
    def _fenced_write(st: dict[str, Any], action: str, records: list[Record]) -> None:
        """Refuse a stale token, then record the write (called under the state lock)."""
        token, holder = _fenced(st, "DNS write refused")
        st.setdefault("writes", []).append({
            "token": token, "holder": holder, "action": action,
            "records": [r.to_json() for r in records]})

    def records(self, *, names: list[str] | None = None) -> list[Record]:
        with _state(self.options, "dns") as st:
            recs = self._load(st)
        wanted = {n.lower().rstrip(".") + "." for n in names} if names else None
        return [r for k, r in sorted(recs.items()) if wanted is None or k[0] in wanted]

    def apply(self, *, expected: list[Record], desired: list[Record]) -> Evidence:
        if self.options.fail:
            raise ConnectionError("injected DNS server failure")
        for rec in desired:
            if not rec.values:
                raise PermanentError(f"refusing to leave {rec.name} {rec.type} empty")
        fencing.check()
        with _state(self.options, "dns") as st:
            recs = self._load(st)
            exp = {r.key(): r for r in expected}
            for rec in desired:
                have, want = recs.get(rec.key()), exp.get(rec.key())
                have_values = set(have.values) if have else set()
                want_values = set(want.values) if want else set()
                if have_values != want_values:
                    raise DnsConflict(
                        f"{rec.name} {rec.type} is {sorted(have_values)}, "
                        f"expected {sorted(want_values)}; nothing changed"
                    )
            before = [recs[r.key()].to_json() for r in desired if r.key() in recs]
            written = [Record(r.key()[0], r.type.upper(), r.ttl, tuple(sorted(r.values)))
                       for r in desired]
            self._fenced_write(st, "apply", written)
            for rec in written:
                recs[rec.key()] = rec
            st["records"] = [r.to_json() for r in recs.values()]
        return {"before": before, "after": [r.to_json() for r in desired]}

    def delete(self, *, expected: list[Record]) -> Evidence:
        """Delete each set only if it holds exactly `expected`'s values; absent: reported."""
        if self.options.fail:
            raise ConnectionError("injected DNS server failure")
        for rec in expected:
            if not rec.values:
                raise PermanentError(f"record {rec.name} {rec.type}: give the values it must "
                                     "still hold to be deleted")
        fencing.check()
        with _state(self.options, "dns") as st:
            recs = self._load(st)
            gone = [r for r in expected if r.key() not in recs]
            present = [r for r in expected if r.key() in recs]
            wrong = [f"{r.name} {r.type} is {sorted(recs[r.key()].values)}, expected "
                     f"{sorted(r.values)}" for r in present
                     if not _same_values(recs[r.key()], r)]
            if wrong:
                raise DnsConflict("; ".join(wrong) + "; nothing deleted")
            deleted = [recs[r.key()] for r in present]
            if deleted:
                self._fenced_write(st, "delete", deleted)
                for rec in deleted:
                    del recs[rec.key()]
                st["records"] = [r.to_json() for r in recs.values()]
        return {"provider": "memory", "deleted": [r.to_json() for r in deleted],
                "alreadyAbsent": [r.to_json() for r in gone]}

    def verify(self, *, desired: list[Record]) -> Evidence:
        """The records hold `desired` (no values: absent); memory serves what it holds."""
        with _state(self.options, "dns") as st:
            recs = self._load(st)
        wrong = [f"{r.name} {r.type} is {sorted(recs[r.key()].values if r.key() in recs else [])}"
                 f", expected {sorted(r.values)}" for r in desired
                 if not _same_values(recs.get(r.key()), r)]
        if wrong:
            raise DnsConflict("; ".join(wrong))
        if self.options.fail_verify:
            from controller.dns import DnsNotServed

            raise DnsNotServed("injected: the records are in place but a secondary did not "
                               "serve them within verifyTimeout")
        return {"provider": "memory", "verified": [r.to_json() for r in desired],
                "servers": [{"name": "memory", "answer": {
                    f"{r.key()[0]} {r.key()[1]}": sorted(r.values) for r in desired}}]}

    def writes(self) -> list[dict[str, Any]]:
        """Every write this fake accepted, with the fencing token and holder that made it."""
        with _state(self.options, "dns") as st:
            return [dict(w) for w in st.get("writes", [])]


# --- backups -------------------------------------------------------------------------------


class Damage(enum.Enum):
    """How a fake backup is damaged (`"damaged"` in its entry): `missing`, its payload is
    gone and the integrity pass before a restore says so; `corrupt`, its payload looks
    whole (same size) and only the restorer's stream finds it does not authenticate."""

    MISSING = "missing"
    CORRUPT = "corrupt"


class FakeStoreOptions(FakeOptions):
    backups: list[dict[str, Any]] = Field(
        default_factory=list, description="catalog entries: id, dataset, kind, takenAt, "
        "verified, verification, size, meta; `damaged`: a `Damage` value")


class FakeBackupStore(BackupStore):
    Options = FakeStoreOptions

    def __init__(self, options: FakeStoreOptions, *, secrets: Any = None, audit: Any = None):
        self.options = options

    def list(self, *, dataset: str) -> list[Backup]:
        """The entries of the options, as `record_damage` left them (in the fake's state)."""
        with _state(self.options, "store") as st:
            marked: dict[str, str] = dict(st.get("damage", {}))
        found = [
            Backup(
                id=b["id"], dataset=b["dataset"], kind=b.get("kind", "daily"),
                taken_at=float(b.get("takenAt", 0)), location=b.get("location", f"mem:{b['id']}"),
                verified=False if b["id"] in marked else b.get("verified"),
                verification=marked.get(b["id"], b.get("verification", "")),
                size=b.get("size"), meta={**b.get("meta", {}), **(
                    {"damaged": Damage(b["damaged"]).value} if "damaged" in b else {})},
            )
            for b in self.options.backups
            if b["dataset"] == dataset
        ]
        return sorted(found, key=lambda b: b.taken_at, reverse=True)

    def record_damage(self, backup: Backup, *, reason: str, actor: str) -> str:
        """As a catalog store records it: the backup lists as a failed verification."""
        with _state(self.options, "store") as st:
            st.setdefault("damage", {})[backup.id] = f"restore failed: {reason}"[:1000]
        return f"marked not verified in mem:{backup.id} (by {actor})"

    def check_integrity(self, backup: Backup) -> str:
        """A `missing` payload fails (DamagedBackup); a `corrupt` one passes, as a flipped
        byte passes a real store's size check."""
        if backup.meta.get("damaged") == Damage.MISSING.value:
            raise DamagedBackup(f"{backup.id}: its payload {backup.location} is missing from "
                                "the store")
        return f"{backup.id}: {backup.location} as cataloged"


class FakeRestorerOptions(FakeOptions):
    fail: bool = False


class FakeRestorer(Restorer):
    """Restores in memory with the real restorers' contract (only a verified backup,
    evidence with the same keys, a target holding data refused) and a fenced target's: the
    step's fence is checked before anything is written (`fencing.Cancelled`), each restore
    is recorded with its fencing token and holder (`restored()`), a restore whose token is
    smaller than the largest one accepted before is refused with `fencing.StaleToken`. A
    target remembers the backup restored into it: a retry of that backup (its answer lost,
    or the controller died before recording it) answers `alreadyRestored` and records
    nothing, as the real restorers recognise their own finished restore; another backup is
    refused, naming what the target holds, unless the target's options allow `overwrite`.
    A `corrupt` backup (see `Damage`) fails like a payload that does not authenticate
    (`DamagedBackup`), once the fence was checked and before anything is recorded: the
    target is left as it was."""

    Options = FakeRestorerOptions

    def __init__(self, options: FakeRestorerOptions, *, secrets: Any = None, audit: Any = None):
        self.options = options
        self._audit = audit

    def restore(self, *, backup: Backup, into: Target) -> Evidence:
        """Like the real restorers: only a verified backup, evidence with the same keys."""
        if backup.verified is not True:
            raise PermanentError(f"backup {backup.id} is not verified "
                                 f"({backup.verification or 'never verified'}); only a "
                                 "backup whose verification passed may be restored")
        if self.options.fail:
            raise ConnectionError("injected restore failure")
        if backup.meta.get("damaged") == Damage.CORRUPT.value:
            fencing.check()  # as the real stream does before its first chunk
            raise DamagedBackup(f"{backup.id}: authentication failed at chunk 3: the stored "
                                "backup was modified, corrupted or truncated")
        started = time.time()
        where = f"{into.host or 'localhost'}:{into.path}"
        with _state(self.options, "restorer") as st:
            token, holder = _fenced(st, f"restore of {backup.id} onto {into.path} refused")
            holds = st.setdefault("holds", {})
            already = holds.get(where) == backup.id
            if where in holds and not already and into.options.get("overwrite") is not True:
                raise PermanentError(
                    f"restore target {into.path} on {into.host or 'localhost'} is not empty; "
                    f"it holds backup {holds[where]}, restored earlier; set `overwrite: true` "
                    "(the data is kept aside until the restore passed validation) or pick "
                    "an empty directory")
            if not already:
                holds[where] = backup.id
                st.setdefault("restored", []).append({"backup": backup.id, "into": into.path,
                                                      "token": token, "holder": holder})
        rpo_budget = into.options.get("rpo")
        rpo = started - backup.taken_at
        actor = str(into.options.get("actor", "controller"))
        if self._audit is not None:
            self._audit(at=started, actor=actor, action="restore",
                        detail=f"restored {backup.id} onto {where}"
                               + (" (already there: nothing restored)" if already else ""))
        return {"backup": backup.id, "dataset": backup.dataset, "kind": backup.kind,
                "host": into.host or "localhost", "path": into.path,
                "rpoSeconds": round(rpo, 3), "rpoBudgetSeconds": rpo_budget,
                "rpoMet": None if rpo_budget is None else rpo <= float(rpo_budget),
                "alreadyRestored": already, "resumed": None,
                "phases": {}, "validation": [], "seconds": round(time.time() - started, 3),
                "triggeredBy": actor}

    def restored(self) -> list[dict[str, Any]]:
        """Every restore in order: {backup, into, token, holder}."""
        with _state(self.options, "restorer") as st:
            return list(st.get("restored", []))


# --- notifications -------------------------------------------------------------------------


class FakeNotifierOptions(FakeOptions):
    fail: bool = False


class FakeNotifier(Notifier):
    """Keeps every notice it is given; with `fail`, raises like a real notifier whose
    destination stays down after its retries (nothing is kept)."""

    Options = FakeNotifierOptions

    def __init__(self, options: FakeNotifierOptions, *, secrets: Any = None):
        self.options = options

    def send(self, *, notice: Notice) -> None:
        if self.options.fail:
            from controller.notify.common import NotifyError

            raise NotifyError(f"memory notifier {self.options.key}: injected failure "
                              "(after 1 attempt)")
        with _state(self.options, "notifier") as st:
            st.setdefault("sent", []).append(
                {"subject": notice.subject, "level": notice.level, "status": notice.status,
                 "recipients": list(notice.recipients), "run": notice.run_id,
                 "affected": list(notice.affected),
                 "estimatedRecovery": notice.estimated_recovery, "link": notice.link,
                 "at": notice.at}
            )

    def sent(self) -> list[dict[str, Any]]:
        """What was delivered, once this process's engines have finished sending: their
        notices go out off the step path (`controller.outbox`)."""
        from controller.outbox import settle

        settle()
        with _state(self.options, "notifier") as st:
            return list(st.get("sent", []))
