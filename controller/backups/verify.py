"""Backup verification: prove a stored backup restorable and write the result back.

Owns the checks that decide `Backup.verified`, run by the `verify` command, after each
backup, and by the scheduled readiness job (`verify_unverified`):
1. `checksums`: every stored object's size and SHA-256 against the catalog (streamed), and
   a payload's binding to its entry (another backup's payload fails, naming both; an
   unbound one says "unbound (format 1)"); a pass records each object's ETag, which the
   integrity pass before a restore compares (so a deliberate copy is re-verified, not
   refused forever);
2. `decrypt`: every AES-256-GCM chunk authenticated while the payload streams out;
3. `pg_verifybackup`: the files against the backup's manifest (tar backups extracted
   first: PG15 cannot verify tar format);
   or, for pgBackRest sets, `pgbackrest verify --output=text --verbose`, whose output is
   parsed, because it exits 0 even when it reports corruption;
4. `test-restore`: a scratch PostgreSQL started on the restored files, promoted, and the
   plan's validation queries run against it; then stopped by PID and removed.
A failed check stops the later ones. The result (passed, when, duration, per-check
details, one summary sentence) is appended to the backup's catalog entry and audited.

A catalog entry that is incomplete (an object without its size or SHA-256, an unknown
format) fails `checksums` with the field named: what cannot be proven intact is never
restored. A problem of configuration, not of the backup (the store's encryption key
missing, unreadable or not 32 bytes; `testRestore: false` for a base backup; a pgBackRest
set without the verifier's `pgbackrest:` options), is reported per backup as bad input
(`badInput`) and recorded nowhere, so a mistake in the plan never marks good backups
failed; the scheduled job goes on with the other backups either way.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups import Verifier, crypto, naming
from controller.backups.catalog import (
    AuditSink,
    CatalogError,
    CatalogStore,
    payload_binding,
    sha256_stream,
    stored_objects,
)
from controller.backups.hosts import CommandError, LocalHost
from controller.backups.node import RestoreFailed, ValidationQuery
from controller.backups.restore import (
    BaseBackupRestorer,
    BaseBackupRestorerOptions,
    PgBackRestRestorer,
    PgBackRestRestorerOptions,
    StoreSpec,
    build_store,
)
from controller.model import Backup, Evidence, PermanentError, Target
from controller.netutil import free_port
from controller.secrets import Secrets, redact

log = logging.getLogger(__name__)
_BACKUP = re.compile(r"^\s*backup: (\S+), status: (\S+), total files checked: (\d+), "
                     r"total valid files: (\d+)")
_ARCHIVE = re.compile(r"^\s*archiveId: (\S+), total WAL checked: (\d+), total valid WAL: (\d+)")
_COUNTS = re.compile(r"(missing|checksum invalid|size invalid|other): (\d+)")


def parse_pgbackrest_verify(text: str) -> dict[str, Any]:
    """Parse `pgbackrest verify --output=text [--verbose]` (2.45 layout) into a dict."""
    out: dict[str, Any] = {"stanza": None, "status": None, "archives": [], "backups": {}}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if line.startswith("stanza: "):
            out["stanza"] = line.split(": ", 1)[1].strip()
        elif line.startswith("status: "):
            out["status"] = line.split(": ", 1)[1].strip()
        elif m := _BACKUP.match(line):
            current = {"status": m.group(2), "checked": int(m.group(3)),
                       "valid": int(m.group(4))}
            out["backups"][m.group(1)] = current
        elif m := _ARCHIVE.match(line):
            current = {"archiveId": m.group(1), "checked": int(m.group(2)),
                       "valid": int(m.group(3))}
            out["archives"].append(current)
        elif current is not None and _COUNTS.search(line):
            for key, value in _COUNTS.findall(line):
                current[key.replace(" ", "_")] = int(value)
    return out


def judge_pgbackrest(parsed: dict[str, Any], label: str) -> tuple[bool, str]:
    """Passed only if the stanza is ok, the set is valid, and no file or WAL is bad."""
    if parsed["status"] is None:
        return False, "pgbackrest verify printed no status (was --output=text given?)"
    backup = parsed["backups"].get(label)
    problems = []
    if parsed["status"] != "ok":
        problems.append(f"stanza status {parsed['status']}")
    if backup is None:
        problems.append(f"set {label} not in the verify report")
    elif backup["status"] != "valid" or backup["valid"] != backup["checked"]:
        bad = {k: v for k, v in backup.items() if k in ("missing", "checksum_invalid",
                                                          "size_invalid", "other") and v}
        problems.append(f"set {label} {backup['status']}: {backup['valid']}/"
                        f"{backup['checked']} files valid {bad or ''}".strip())
    for arc in parsed["archives"]:
        if arc["valid"] != arc["checked"]:
            problems.append(f"WAL {arc['archiveId']}: {arc['valid']}/{arc['checked']} valid")
    if problems:
        return False, "; ".join(problems)
    return True, (f"set {label} valid: {backup['valid'] if backup else 0} files, "
                  f"{sum(a['valid'] for a in parsed['archives'])} WAL segments")


class PgBackRestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    config: str
    stanza: str
    pgbackrest: str = "pgbackrest"
    os_user: str = Field("postgres", alias="osUser")


class VerifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    store: StoreSpec
    scratch: str = Field(tempfile.gettempdir(), description="where test restores go")
    validation: list[ValidationQuery] = Field(default_factory=list)
    test_restore: bool = Field(True, alias="testRestore")
    pgbackrest: PgBackRestSpec | None = None
    pg_bin: str = Field("/usr/lib/postgresql/15/bin", alias="pgBin")
    actor: str = "verifier"


class CatalogVerifier(Verifier):
    """The `verifier` backend: `verify(backup=...)` runs the checks and records them."""

    Options = VerifierOptions

    def __init__(self, options: VerifierOptions, *, secrets: Secrets | None = None,
                 audit: AuditSink | None = None, store: CatalogStore | None = None):
        self.options = options
        self.secrets = secrets or Secrets()
        self.audit = audit
        self.store = store or build_store(options.store, secrets=self.secrets, audit=audit)

    # --- the checks --------------------------------------------------------------------------

    def _checksums(self, backup: Backup, etags: dict[str, str | None]) -> str:
        """Fills `etags` (key -> ETag of the bytes checked) for the catalog."""
        objects = stored_objects(backup)
        total, binding = 0, ""
        for obj in objects:
            peek = self.store.objects.peek(obj["key"], crypto.MAX_HEADER)
            if obj["key"] == naming.payload_key(backup.id):
                binding = f"; payload {payload_binding(backup, peek.head)}"
            with contextlib.closing(self.store.open_raw(obj["key"])) as src:
                digest, size = sha256_stream(src)
            if size != obj["size"]:
                raise PermanentError(f"{obj['key']}: size {size} != catalog {obj['size']}")
            if digest != obj["sha256"]:
                raise PermanentError(f"{obj['key']}: checksum mismatch (sha256 {digest[:16]}… "
                                     f"!= catalog {obj['sha256'][:16]}…)")
            etags[obj["key"]] = peek.etag
            total += size
        return f"{len(objects)} objects, {total} bytes, sha256 match{binding}"

    def _pgbackrest_verify(self, backup: Backup) -> str:
        spec = self.options.pgbackrest
        if spec is None:
            raise PermanentError("a pgBackRest backup needs the verifier's `pgbackrest:` "
                                 "options (config, stanza)")
        label = (backup.meta.get("pgbackrest") or {}).get("label", "")
        argv = [spec.pgbackrest, f"--config={spec.config}", f"--stanza={spec.stanza}",
                "--output=text", "--verbose", "verify"]
        if LocalHost().run(["id", "-u"]).out.strip() == "0":
            argv = ["runuser", "-u", spec.os_user, "--", *argv]
        result = LocalHost().run(argv, timeout=6 * 3600, check=False)
        if result.rc != 0:
            raise PermanentError(f"pgbackrest verify exited {result.rc}: "
                                 f"{result.err.strip()[-500:]}")
        ok, detail = judge_pgbackrest(parse_pgbackrest_verify(result.out), label)
        if not ok:
            raise PermanentError(detail)
        return detail

    def _test_restore(self, backup: Backup, checks: list[dict[str, Any]]) -> None:
        fmt = backup.meta.get("format")
        base = Path(tempfile.mkdtemp(prefix=f"verify-{backup.id[:40]}-",
                                     dir=self.options.scratch))
        base.chmod(0o755)
        into = Target(host=None, path=str(base / "data"), options={
            "port": free_port(), "socketDir": str(base / "sock"), "pgBin": self.options.pg_bin,
            "validation": [q.model_dump(by_alias=True) for q in self.options.validation],
            "actor": self.options.actor})
        restorer: BaseBackupRestorer | PgBackRestRestorer
        if fmt == "basebackup":
            restorer = BaseBackupRestorer(
                BaseBackupRestorerOptions(store=self.options.store, actor=self.options.actor),
                secrets=self.secrets, audit=self.audit, store=self.store)
        else:
            spec = self.options.pgbackrest
            assert spec is not None
            restorer = PgBackRestRestorer(PgBackRestRestorerOptions(
                config=spec.config, stanza=spec.stanza, pgbackrest=spec.pgbackrest,
                actor=self.options.actor), secrets=self.secrets, audit=self.audit)
        started = time.monotonic()
        try:
            ev = restorer.test_restore(backup=backup, into=into)
            ph = ev["phases"]
            if fmt == "basebackup":
                checks.append(_check("decrypt", True, ph.get("fetch", 0.0),
                                     f"{ev['bytes']} bytes authenticated ({ev['mbPerSecond']} "
                                     "MB/s)"))
                checks.append(_check("pg_verifybackup", True, ph.get("verify", 0.0),
                                     "files match backup_manifest"))
            checks.append(_check("test-restore", True, time.monotonic() - started,
                                 f"promoted in {ph['start'] + ph['promote']:.2f} s; "
                                 f"{len(ev['validation'])} validation queries passed",
                                 validation=ev["validation"]))
        except RestoreFailed as exc:
            name = {"fetch": "decrypt", "verify": "pg_verifybackup"}.get(exc.phase,
                                                                         "test-restore")
            if fmt != "basebackup" and name == "decrypt":
                name = "test-restore"
            checks.append(_check(name, False, time.monotonic() - started, str(exc)))
        except (PermanentError, CommandError) as exc:
            checks.append(_check("decrypt" if fmt == "basebackup" else "test-restore", False,
                                 time.monotonic() - started, str(exc)))
        finally:
            restorer.stop(into=into)
            shutil.rmtree(base, ignore_errors=True)

    def _bad_input(self, backup: Backup) -> str | None:
        """Why this backup cannot be verified with this configuration (None: it can)."""
        fmt = backup.meta.get("format")
        if fmt == "basebackup":
            if not self.options.test_restore:
                return ("the verifier's `testRestore: false` leaves base backups unproven (the "
                        "payload must at least be decrypted and checked against its "
                        "manifest); remove it, or set it only on a verifier of pgBackRest sets")
            try:
                self.store.check_key()
            except CatalogError as exc:
                return str(exc)
        elif fmt == "pgbackrest" and self.options.pgbackrest is None:
            return ("a pgBackRest set needs the verifier's `pgbackrest:` options (config, "
                    "stanza); add them")
        return None

    # --- entry points ------------------------------------------------------------------------

    def verify(self, *, backup: Backup, actor: str | None = None) -> Evidence:
        """Run the checks and record the result; a configuration problem (`_bad_input`)
        is returned as `badInput` and recorded nowhere."""
        actor = actor or self.options.actor
        at, started = time.time(), time.monotonic()
        problem = self._bad_input(backup)
        if problem is not None:
            summary = redact(f"not verified: {problem}; nothing was recorded")[:1000]
            self.store.audit(actor=actor, action="verify",
                             detail=f"{backup.id}: NOT VERIFIED (bad input): {problem}")
            return {"backup": backup.id, "verified": backup.verified, "passed": False,
                    "badInput": True, "at": at,
                    "durationS": round(time.monotonic() - started, 3), "summary": summary,
                    "checks": []}
        checks: list[dict[str, Any]] = []
        fmt = backup.meta.get("format")
        etags: dict[str, str | None] = {}
        steps: list[tuple[str, Callable[[Backup], str]]] = [
            ("checksums", partial(self._checksums, etags=etags))]
        if fmt == "pgbackrest":
            steps.append(("pgbackrest verify", self._pgbackrest_verify))
        for name, fn in steps:
            t = time.monotonic()
            try:
                detail = fn(backup)  # before the clock is read: the check's own duration
                checks.append(_check(name, True, time.monotonic() - t, detail))
            except (PermanentError, OSError, CommandError) as exc:
                checks.append(_check(name, False, time.monotonic() - t, str(exc)))
                break
        if all(c["passed"] for c in checks) and self.options.test_restore:
            self._test_restore(backup, checks)
        passed = all(c["passed"] for c in checks)
        failed = next((c for c in checks if not c["passed"]), None)
        summary = (f"{failed['name']} failed: {failed['detail']}" if failed else
                   "passed: " + ", ".join(c["name"] for c in checks))
        result = {"passed": passed, "at": at, "durationS": round(time.monotonic() - started, 3),
                  "summary": redact(summary)[:1000], "checks": checks}
        updated = self.store.record_verification(backup.id, result, actor=actor, etags=etags)
        return {"backup": updated.id, "verified": updated.verified, **result}

    def verify_unverified(self, *, dataset: str, actor: str | None = None) -> list[Evidence]:
        """The scheduled job: verify every backup of `dataset` never verified yet. One
        backup that cannot be verified (bad input, or an error such as the store failing
        mid-way, returned as `error` and recorded nowhere) does not stop the others."""
        results: list[Evidence] = []
        for backup in self.store.list(dataset=dataset):
            if backup.verified is not None:
                continue
            try:
                results.append(self.verify(backup=backup, actor=actor))
            except (fencing.Cancelled, fencing.LostLease, fencing.StaleToken):
                raise
            except Exception as exc:
                detail = redact(f"{type(exc).__name__}: {exc}")[:1000]
                log.error("could not verify %s: %s", backup.id, detail,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                results.append({"backup": backup.id, "verified": backup.verified,
                                "passed": False, "error": detail, "at": time.time(),
                                "durationS": 0.0, "checks": [],
                                "summary": f"not verified: {detail}; nothing was recorded"})
        return results


def _check(name: str, passed: bool, seconds: float, detail: str, **extra: Any
           ) -> dict[str, Any]:
    return {"name": name, "passed": passed, "seconds": round(seconds, 3),
            "detail": redact(detail)[:1000], **extra}
