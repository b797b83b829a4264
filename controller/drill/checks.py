"""What must hold after a sandbox failover and failback, measured on the real services.

Owns the scenario's post-conditions (`WorldExpect`) and how each is measured, always
from outside the controller, the way a user or an auditor would see it:

- `traffic`: requests sent through the HAProxy frontend on every channel, counted by the
  `X-Site` header of whoever answered (all must be 200 from the expected site);
- `dns`: every authoritative server asked directly (no recursion, no cache) for the
  service name; each must answer the expected site's address;
- `restore`: the restore step succeeded with its validation passed, the validation
  queries run again on the restored node itself, and the backup chosen is the newest
  (or, with `fallback: true`, an older verified one, the newer ones skipped and why),
  from a location matching `location` when given (e.g. the off-site bucket);
- `notices`: the SMTP server (and the webhook receiver for IM/SMS) received the run's
  notices at the expected level, addressed to exactly that level's recipients, over
  STARTTLS with a login; no other level's recipients heard of the run;
- `database`: dc-a's primary PostgreSQL answers again (after a database fault);
- `promoted` (after the failover, with the sandbox's standby): the promote step fenced
  dc-a and promoted dc-b (its timeline, LSN reached, the primary's last LSN, bytes lost),
  measured on dc-b itself (writable, on the new timeline, dc-a not answering); then the
  app writes `writes` orders at dc-b, one transaction each, and the checks keep their ids,
  their sum and dc-b's LSN after the last commit;
- `databaseHome` (after the failback): the failback's `db-failback` step brought the
  database home before any traffic or DNS revert began; dc-a is the writable primary
  again and holds every order written at dc-b during the incident (ids and sum); its LSN
  is past dc-b's last incident commit; dc-b is in recovery, streaming from dc-a, and
  holds them too.
A condition that converges (a DNS server catching up after a repair) is polled until it
holds or `settle` runs out. Details name what was seen, never a secret.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import dns.exception
import dns.flags
import dns.message
import dns.query
from pydantic import BaseModel, ConfigDict, Field

from controller.drill.runner import Check
from controller.drill.sandbox import ADDRESSES, NAME, Sandbox, validation
from controller.drill.servers.base import ServerError
from controller.drill.servers.postgres import PostgresServer
from controller.notify.slack import mention
from controller.plan import Duration, FailoverPlan
from controller.steps.restore import KIND as RESTORE

Site = Literal["dc-a", "dc-b"]
CHANNELS = ("web", "api", "hotline")


class RestoreExpect(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    fallback: bool = Field(False, description="the newest backup must be skipped for an "
                           "older verified one")
    location: str | None = Field(None, description="regular expression the restored "
                                 "backup's location must match, e.g. the off-site bucket")


class PromotedExpect(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    writes: int = Field(100, ge=1, le=100_000, description="orders the app writes at the "
                        "promoted dc-b during the incident, one transaction each")


class NoticeExpect(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    level: int = Field(ge=1, le=4)


class WorldExpect(BaseModel):
    """Post-conditions measured on the sandbox's services (`expect.afterFailover` and
    `expect.afterFailback` of a scenario)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    traffic: Site | None = Field(None, description="the site serving every channel "
                                 "through HAProxy")
    dns: Site | None = Field(None, description="the site every authoritative server answers")
    restore: RestoreExpect | None = None
    notices: NoticeExpect | None = None
    database: Site | None = Field(None, description="dc-a: the primary database answers")
    promoted: PromotedExpect | None = Field(None, description="dc-b's standby promoted "
                                            "after fencing dc-a; the app writes there")
    database_home: bool = Field(False, alias="databaseHome", description="the failback "
                                "brought the database and every incident-time order home "
                                "to dc-a, before traffic and DNS")
    settle: Duration = Field(15.0, description="how long a converging condition may take")


def _slack_level(body: dict[str, Any]) -> str:
    """The level shown in a Slack message's `*Level*` field."""
    for block in body.get("blocks", []):
        for item in block.get("fields", []):
            text = str(item.get("text", ""))
            if text.startswith("*Level*\n"):
                return text.split("\n", 1)[1]
    return "?"


def _poll(settle: float, measure: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    deadline = time.monotonic() + settle
    while True:
        ok, detail = measure()
        if ok or time.monotonic() >= deadline:
            return ok, detail
        time.sleep(0.1)


class WorldChecks:
    """The `World` of a sandbox scenario: measures `WorldExpect` after each phase."""

    def __init__(self, sb: Sandbox, plan: FailoverPlan, *, after_failover: WorldExpect,
                 after_failback: WorldExpect):
        self.sb, self.plan = sb, plan
        self.expect = {"failover": after_failover, "failback": after_failback}
        self.incident: dict[str, Any] = {}  # the orders written at dc-b, and its LSN then

    def after_failover(self, report: dict[str, Any] | None) -> list[Check]:
        return self._run(self.expect["failover"], report)

    def after_failback(self, report: dict[str, Any] | None) -> list[Check]:
        return self._run(self.expect["failback"], report)

    def _run(self, want: WorldExpect, report: dict[str, Any] | None) -> list[Check]:
        out: list[Check] = []
        if want.traffic:
            ok, detail = _poll(want.settle, lambda: self.traffic(want.traffic or ""))
            out.append((f"traffic served by {want.traffic} through HAProxy", ok, detail))
        if want.dns:
            ok, detail = _poll(want.settle, lambda: self.dns(want.dns or ""))
            out.append((f"DNS answers {want.dns} on every authoritative server", ok, detail))
        if want.database:
            ok, detail = _poll(want.settle, self.primary_database)
            out.append(("dc-a database answers", ok, detail))
        if want.promoted:
            out.append(self.promoted(report))
            out.append(self.incident_writes(want.promoted.writes))
        if want.database_home:
            out.append(self.database_home(report, want.settle))
        if want.restore:
            out.append(self.restore(report, want.restore))
        if want.notices:
            out.append(self.notices(report, want.notices.level))
        return out

    # --- measurements -------------------------------------------------------------------------

    def traffic(self, site: str) -> tuple[bool, str]:
        edge = self.sb.edge
        assert edge is not None
        seen: dict[str, int] = {}
        errors: list[str] = []
        conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=2)
        try:
            for channel in CHANNELS:
                for _ in range(20):
                    try:
                        conn.request("GET", f"/{channel}")
                        reply = conn.getresponse()
                        reply.read()
                    except (OSError, http.client.HTTPException) as exc:
                        errors.append(type(exc).__name__)
                        conn.close()
                        continue
                    who = reply.getheader("X-Site") or "(no X-Site)"
                    key = who if reply.status == 200 else f"{who} HTTP {reply.status}"
                    seen[key] = seen.get(key, 0) + 1
        finally:
            conn.close()
        total = 20 * len(CHANNELS)
        got = seen.get(site, 0)
        split = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
        return got == total, (f"{got}/{total} requests on /{', /'.join(CHANNELS)} through "
                              f"haproxy 127.0.0.1:{edge.port} answered 200 by {site} "
                              f"({split}{'; errors ' + ', '.join(errors) if errors else ''})")

    def dns(self, site: str) -> tuple[bool, str]:
        bind = self.sb.bind
        assert bind is not None
        want = ADDRESSES[site]
        answers = []
        for server in bind.servers:
            query = dns.message.make_query(NAME, "A")
            query.flags &= ~dns.flags.RD
            try:
                reply = dns.query.udp(query, server.address, port=server.port, timeout=1)
                values = sorted(r.to_text() for rrset in reply.answer for r in rrset)
                got = ",".join(values) or "(empty)"
            except (dns.exception.DNSException, OSError) as exc:
                got = "no answer" if isinstance(exc, dns.exception.Timeout) else str(exc)
            answers.append((server.name, got))
        ok = all(got == want for _, got in answers)
        return ok, f"{NAME} A, want {want} ({site}): " + ", ".join(
            f"{n} {got}" for n, got in answers)

    def primary_database(self) -> tuple[bool, str]:
        db = self.sb.db
        assert db is not None
        try:
            count = db.psql("SELECT count(*) FROM orders")
        except ServerError as exc:
            return False, f"dc-a PostgreSQL on port {db.port}: {exc}"
        return True, f"dc-a PostgreSQL on port {db.port} answers: {count} orders"

    def _servers(self) -> tuple[PostgresServer, PostgresServer]:
        dbs = self.sb.databases  # a scenario expecting a promotion has a standby
        assert dbs is not None and dbs.primary is not None and dbs.standby is not None
        return dbs.primary, dbs.standby

    def promoted(self, report: dict[str, Any] | None) -> Check:
        name = "dc-a fenced and dc-b's standby promoted"
        step = _step(report, "promote")
        if step is None or step["status"] != "succeeded":
            return name, False, "no promote step ran" if step is None else \
                f"{step['name']} {step['status']}: {step['error']}"
        ev = step["evidence"]
        primary, standby = self._servers()
        problems = []
        try:
            recovery, timeline, lsn = standby.psql(  # the WAL file's timeline, not the
                # last checkpoint's (which lags a promotion)
                "SELECT pg_is_in_recovery(), ('x' || substr(pg_walfile_name("
                "pg_current_wal_lsn()), 1, 8))::bit(32)::int, pg_current_wal_lsn()").split("|")
        except ServerError as exc:
            return name, False, f"dc-b PostgreSQL on port {standby.port}: {exc}"
        if recovery != "f" or timeline != str(ev.get("timeline")):
            problems.append(f"dc-b in recovery: {recovery}, on timeline {timeline}")
        try:
            primary.psql("SELECT 1")
        except ServerError:
            fenced = True  # what a fenced primary does: answer nothing
        else:
            fenced = False
            problems.append(f"dc-a still answers SQL on port {primary.port}: two primaries")
        fence = ev.get("fence", {})
        how = "down already" if fence.get("already") else "stopped now"
        detail = (f"dc-a fenced by {fence.get('how')} ({how}); dc-b promoted "
                  f"to timeline {ev.get('timeline')} at LSN {ev.get('lsnReached')} "
                  f"(dc-a's last LSN {ev.get('primaryLastLsn') or 'unknown'}, "
                  f"{ev.get('rpoBytes', '-')} bytes lost); dc-b now writable on timeline "
                  f"{timeline} at {lsn}" + ("; dc-a answers no SQL" if fenced else ""))
        return name, not problems, ("; ".join(problems) + " — " if problems else "") + detail

    def incident_writes(self, count: int) -> Check:
        """The app's orders at dc-b during the incident, one commit each."""
        name = f"the app writes {count} orders at dc-b during the incident"
        _, standby = self._servers()
        first = self.sb.options.rows + 1
        last = first + count - 1
        try:
            standby.psql(f"DO $$ BEGIN FOR i IN {first}..{last} LOOP INSERT INTO orders "
                         "(id, amount) VALUES (i, i % 97 + 1); COMMIT; END LOOP; END $$")
            got, total, lsn = standby.psql(
                f"SELECT count(*), COALESCE(sum(amount), 0)::bigint, pg_current_wal_lsn() "
                f"FROM orders WHERE id BETWEEN {first} AND {last}").split("|")
        except ServerError as exc:
            return name, False, f"dc-b PostgreSQL on port {standby.port}: {exc}"
        want = sum(i % 97 + 1 for i in range(first, last + 1))
        self.incident = {"first": first, "last": last, "sum": want, "lsn": lsn}
        ok = got == str(count) and total == str(want)
        return name, ok, (f"{got} orders (ids {first}-{last}, amounts summing to {total}, "
                          f"want {want}) committed at dc-b, its LSN then {lsn}")

    def database_home(self, report: dict[str, Any] | None, settle: float) -> Check:
        name = "every order written at dc-b during the incident is home at dc-a"
        if not self.incident:
            return name, False, "no orders were written at dc-b during the incident"
        step = _step(report, "db-failback")
        if step is None or step["status"] != "succeeded":
            return name, False, ("the failback ran no db-failback step: dc-a was not "
                                 "rebuilt" if step is None else
                                 f"{step['name']} {step['status']}: {step['error']}")
        early = [s["name"] for s in (report or {}).get("steps", [])
                 if s["index"] != step["index"] and s["startedAt"] is not None
                 and s["startedAt"] < (step["finishedAt"] or 0)]
        ok, detail = _poll(settle, self._home)
        if early:
            ok, detail = False, f"{', '.join(early)} began before the database was home — " \
                                f"{detail}"
        return name, ok, detail

    def _home(self) -> tuple[bool, str]:
        primary, standby = self._servers()
        first, last, lsn = self.incident["first"], self.incident["last"], self.incident["lsn"]
        at = ("CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE "
              "pg_current_wal_lsn() END")
        sql = (f"SELECT pg_is_in_recovery(), count(*), COALESCE(sum(amount), 0)::bigint, {at}, "
               f"{at} >= '{lsn}', COALESCE((SELECT status || ' from port ' || sender_port "
               f"FROM pg_stat_wal_receiver), 'no WAL receiver') FROM orders "
               f"WHERE id BETWEEN {first} AND {last}")
        want = (str(last - first + 1), str(self.incident["sum"]))
        problems, seen = [], []
        for site, server, role in (("dc-a", primary, "f"), ("dc-b", standby, "t")):
            try:
                recovery, count, total, at_lsn, past, receiver = server.psql(sql).split("|")
            except ServerError as exc:
                problems.append(f"{site} on port {server.port}: {exc}")
                continue
            what = "primary" if recovery == "f" else f"standby ({receiver})"
            seen.append(f"{site} {what} at LSN {at_lsn} holds {count} of them (sum {total})")
            if recovery != role:
                problems.append(f"{site} is {'not ' if role == 'f' else ''}the writable "
                                "primary")
            if (count, total) != want:
                problems.append(f"{site} holds {count} of {want[0]} orders (sum {total}, "
                                f"want {want[1]})")
            if past != "t":
                problems.append(f"{site} at {at_lsn} is behind dc-b's last incident commit")
            if role == "t" and receiver != f"streaming from port {primary.port}":
                problems.append(f"dc-b does not stream from dc-a (port {primary.port}): "
                                f"{receiver}")
        detail = (f"orders {first}-{last} (sum {want[1]}) were committed at dc-b up to LSN "
                  f"{lsn}; " + "; ".join(seen))
        return not problems, ("; ".join(problems) + " — " if problems else "") + detail

    def restore(self, report: dict[str, Any] | None, want: RestoreExpect) -> Check:
        name = "restored data passes validation" + (", from an older verified backup"
                                                    if want.fallback else "")
        step = next((s for s in (report or {}).get("steps", [])
                     if s["action"] == RESTORE.action), None)
        if step is None or step["status"] != "succeeded":
            why = "no restore step ran" if step is None else \
                f"{step['name']} {step['status']}: {step['error']}"
            return name, False, why
        ev = step["evidence"]
        problems = [f"{q['name']} failed in the step" for q in ev.get("validation", [])
                    if not q["passed"]]
        node = PostgresServer(self.sb.restore_data.parent, port=self.sb.restore_port)
        seen = []
        for q in validation(self.sb.options.rows):
            try:
                value = node.psql(q["sql"])
            except ServerError as exc:
                problems.append(f"{q['name']}: {exc}")
                continue
            seen.append(f"{q['name'].split(': ')[-1]} = {value}")
            if value != q["expect"]:
                problems.append(f"{q['name']}: {value} != {q['expect']}")
        backups = self.sb.stores.backups
        newest = backups[0].id if backups else None
        chosen, why = ev.get("chosen"), str(ev.get("why", ""))
        if want.fallback and (chosen == newest or "skipped newer" not in why):
            problems.append(f"expected a fall back past the newest backup {newest}, "
                            f"restored {chosen}")
        if not want.fallback and chosen != newest:
            problems.append(f"restored {chosen}, not the newest verified backup {newest}")
        if want.location is not None and not re.search(want.location, ev.get("location", "")):
            problems.append(f"restored from {ev.get('location')}, not a location matching "
                            f"/{want.location}/")
        detail = (f"restored {chosen} from {ev.get('location')} onto {ev.get('host')}:"
                  f"{ev.get('path')} (port {self.sb.restore_port}); re-checked there: "
                  f"{'; '.join(seen)}; {why}")
        return name, not problems, ("; ".join(problems) + " — " if problems else "") + detail

    def notices(self, report: dict[str, Any] | None, level: int) -> Check:
        name = f"notices sent at level {level}"
        mail, hooks = self.sb.mail, self.sb.hooks
        assert mail is not None and hooks is not None
        if report is None:
            return name, False, "no failover run"
        run_id = report["run"]["id"]
        kinds = {b.name: b.kind for b in self.plan.spec.backends}
        mine = self.plan.spec.reached(level)  # its level's routes, or upward: also below
        others = [r for r in self.plan.spec.notifications if r not in mine]

        def addresses(rules: list[Any]) -> set[str]:
            return {a for r in rules if kinds.get(r.notifier) == "smtp" for a in r.recipients
                    if "@" in a and not a.startswith("@")}

        want, wrong = addresses(mine), addresses(others) - addresses(mine)
        mails = [m for m in mail.messages() if m.message.get("X-Failover-Run") == run_id]
        problems = []
        levels = sorted({str(m.message.get("X-Failover-Level")) for m in mails})
        if not mails:
            problems.append("no e-mail received for the run")
        if levels and levels != [str(level)]:
            problems.append(f"e-mails carry levels {', '.join(levels)}")
        got = {a for m in mails for a in m.rcpt_tos}
        if got & wrong:
            problems.append(f"other levels' recipients e-mailed: {', '.join(sorted(got & wrong))}")
        if want - got:
            problems.append(f"never e-mailed: {', '.join(sorted(want - got))}")
        if any(not m.tls or not m.login for m in mails):
            problems.append("an e-mail was sent without STARTTLS and login")
        hooks_seen = []
        for notifier in sorted({r.notifier for r in self.plan.spec.notifications}):
            path = self._hook_path(notifier)
            if path is None:
                continue
            bodies = [json.loads(r.body) for r in hooks.requests(path)
                      if 200 <= r.status < 300 and run_id in r.body.decode(errors="replace")]
            text = json.dumps(bodies)
            label = f"{notifier} ({kinds[notifier]})"
            routed = [r for r in mine if r.notifier == notifier]
            hooks_seen.append(f"{notifier} {len(bodies)}")
            if routed and not bodies:
                problems.append(f"{label}: nothing received")
            if bodies and not routed:
                problems.append(f"{label}: received {len(bodies)} though no route of level "
                                f"{level} uses it")
            seen_levels = {str(b["level"]) if "level" in b else _slack_level(b) for b in bodies}
            if seen_levels - {str(level)}:
                problems.append(f"{label}: levels {', '.join(sorted(seen_levels))}")
            mentions = {rcpt for r in routed for rcpt in r.recipients}
            for rcpt in sorted(mentions):
                if rcpt not in text and mention(rcpt, {}) not in text:
                    problems.append(f"{label}: {rcpt} never addressed")
            for rule in others:
                for rcpt in rule.recipients:
                    if rule.notifier == notifier and rcpt not in mentions and (
                            rcpt in text or mention(rcpt, {}) in text):
                        problems.append(f"{label}: level-{rule.level} recipient {rcpt} "
                                        "addressed")
        detail = (f"{len(mails)} e-mails (STARTTLS, AUTH) at level {', '.join(levels) or '-'} "
                  f"to {', '.join(sorted(got)) or 'nobody'}"
                  + (f"; webhook notices: {', '.join(hooks_seen)}" if hooks_seen else ""))
        return name, not problems, ("; ".join(problems) + " — " if problems else "") + detail

    def _hook_path(self, notifier: str) -> str | None:
        """The path (with its token) a webhook notifier posts to; never shown."""
        spec = next(b for b in self.plan.spec.backends if b.name == notifier)
        url = spec.options.get("url")
        if spec.kind not in ("webhook", "slack") or not isinstance(url, dict):
            return None
        with contextlib.suppress(OSError, KeyError):
            return urlsplit(Path(url["fromFile"]).read_text().strip()).path
        return None


def _step(report: dict[str, Any] | None, action: str) -> dict[str, Any] | None:
    """The report's first step of `action`, if it ran."""
    return next((s for s in (report or {}).get("steps", []) if s["action"] == action), None)
