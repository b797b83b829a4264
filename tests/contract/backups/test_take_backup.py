"""A backup job against real servers: PostgreSQL 15 (pg_basebackup), pgBackRest, and two
moto S3 servers (dc-a's store, dc-b's off-site store): take, verify right after, copy
off-site and check it there (a pgBackRest set's copy: a diff against the off-site
repository's full), prune — and every failure leaves nothing that a restore would choose."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controller.backups import naming
from controller.backups.job import BackupJob, Phase
from controller.backups.s3 import S3BackupStore
from controller.backups.selection import NoRestorableBackup, choose
from controller.backups.verify import CatalogVerifier
from controller.drill.servers.postgres import (
    PostgresServer,
    archive_to_pgbackrest,
    as_user,
    give_to,
)
from controller.model import Backup
from controller.plan import BackupSet, pgbackrest_ciphers
from controller.secrets import Secrets

from .conftest import VALIDATION
from .offsite_store import offsite_endpoint, offsite_options, offsite_store  # noqa: F401


def _set(source: dict[str, Any], **extra: Any) -> BackupSet:
    return BackupSet.model_validate({
        "dataset": "orders", "kind": "daily", "source": source, "store": "dc-a",
        "offsite": "dc-b", "verifier": "verify", **extra})


def _verifier(store: S3BackupStore, options: dict[str, Any], workdir: Path, journal: Any,
              **extra: Any) -> CatalogVerifier:
    return CatalogVerifier(CatalogVerifier.Options.model_validate({
        "store": {"kind": "s3", "options": options}, "scratch": str(workdir),
        "validation": VALIDATION, **extra}), secrets=Secrets(), audit=journal.audit,
        store=store)


def _ciphers(conf: Path) -> dict[int, str]:
    """Each repository's cipher as pgBackRest itself reports it."""
    out = subprocess.run(as_user(["pgbackrest", f"--config={conf}", "--stanza=main",
                                  "--output=json", "info"]),
                         check=True, capture_output=True, text=True).stdout
    return {r["key"]: r["cipher"] for r in json.loads(out)[0]["repo"]}


def _basebackup(pg: PostgresServer) -> dict[str, Any]:
    return {"basebackup": {"host": str(pg.sock), "port": pg.port}}


def test_backup_is_taken_verified_copied_offsite_and_pruned(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, source_pg: PostgresServer,  # noqa: F811
        workdir: Path, journal: Any) -> None:
    spec = _set(_basebackup(source_pg), retention={"keep": 1})
    verifier = _verifier(s3_store, store_options, workdir, journal)
    seen: list[tuple[Phase, str]] = []
    staged: list[tuple[int, list[str]]] = []  # when verified: off-site payload, catalog

    def progress(phase: Phase, text: str) -> None:
        seen.append((phase, text))
        if (phase, text) == (Phase.VERIFY, "started"):
            newest = s3_store.list(dataset="orders")[0]
            staged.append((offsite_store.objects.peek(naming.payload_key(newest.id), 0).size,
                           [b.id for b in offsite_store.list(dataset="orders")]))

    outcomes = [BackupJob(spec, store=s3_store, offsite=offsite_store, verifier=verifier,
                          actor="alice", progress=progress).run()
                for _ in range(2)]

    first, second = outcomes
    assert first.ok and second.ok, (first.error, second.error)
    assert [p for p, t in seen if t == "started"] == list(Phase) * 2
    parsed = naming.parse_name(second.backup or "")
    assert parsed is not None and parsed[1:] == ("orders", "daily")
    [kept] = s3_store.list(dataset="orders")
    assert kept.id == second.backup and kept.verified is True
    assert kept.location.endswith(f"{kept.id}/{kept.id}.bak")
    [copy] = offsite_store.list(dataset="orders")
    assert copy.id == kept.id and copy.verified is True
    assert copy.location.startswith(f"s3://{offsite_store.options.bucket}/dc-b/orders/")
    assert copy.meta["encryption"]["keyId"] != kept.meta["encryption"]["keyId"]
    assert copy.meta["objects"][0]["sha256"] != kept.meta["objects"][0]["sha256"]
    # the copy was written as the backup was taken, cataloged off-site only once verified
    assert staged[1] == (copy.size, [first.backup])
    # retention: keep 1 -> the first backup is gone from both stores
    assert second.pruned and all(first.backup in p for p in second.pruned)
    assert len(second.pruned) == 2

    # the off-site copy alone restores: a test restore with the off-site key only
    offsite_verifier = CatalogVerifier(CatalogVerifier.Options.model_validate({
        "store": {"kind": "s3", "options": offsite_store.options.model_dump(by_alias=True)},
        "scratch": str(workdir), "validation": VALIDATION}), secrets=Secrets(),
        store=offsite_store)
    result = offsite_verifier.verify(backup=copy, actor="drill")
    assert result["passed"], result["summary"]

    actions = [(a["actor"], a["action"]) for a in journal.audit_trail()]
    for action in ("backup", "verify", "backup-offsite", "backup-pruned"):
        assert ("alice", action) in actions


def test_failed_verification_marks_the_backup_failed_and_copies_nothing(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, source_pg: PostgresServer,  # noqa: F811
        workdir: Path, journal: Any) -> None:
    wrong = [{"name": "orders row count", "sql": "SELECT count(*) FROM orders",
              "expect": "999"}]
    verifier = _verifier(s3_store, store_options, workdir, journal)
    verifier.options.validation = CatalogVerifier.Options.model_validate({
        "store": {"kind": "s3"}, "validation": wrong}).validation
    outcome = BackupJob(_set(_basebackup(source_pg)), store=s3_store, offsite=offsite_store,
                        verifier=verifier, actor="alice").run()

    assert outcome.failed is Phase.VERIFY and "never restored" in outcome.error
    [taken] = s3_store.list(dataset="orders")
    assert taken.id == outcome.backup and taken.verified is False
    with pytest.raises(NoRestorableBackup):
        choose(s3_store.list(dataset="orders"))
    assert offsite_store.list(dataset="orders") == []
    assert offsite_store.objects.names() == []  # the copy staged as it was taken: removed


def test_a_backup_the_verifier_cannot_check_is_marked_failed_not_left_unverified(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, source_pg: PostgresServer,  # noqa: F811
        workdir: Path, journal: Any) -> None:
    # testRestore: false is bad input for a base backup: the verifier records nothing
    verifier = _verifier(s3_store, store_options, workdir, journal, testRestore=False)
    outcome = BackupJob(_set(_basebackup(source_pg)), store=s3_store, offsite=offsite_store,
                        verifier=verifier, actor="alice").run()

    assert outcome.failed is Phase.VERIFY and "testRestore: false" in outcome.error
    [taken] = s3_store.list(dataset="orders")
    assert taken.verified is False and "testRestore" in taken.verification


def test_an_unencrypted_pgbackrest_repository_is_refused_before_any_backup(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, stanza: str, pgbackrest_conf: Path,  # noqa: F811
        workdir: Path, journal: Any) -> None:
    spec = _set({"pgbackrest": {"config": str(pgbackrest_conf), "stanza": stanza,
                                "offsiteRepo": 2}}, kind="continuous")
    outcome = BackupJob(spec, store=s3_store, offsite=offsite_store,
                        verifier=_verifier(s3_store, store_options, workdir, journal),
                        actor="alice").run()

    assert outcome.failed is Phase.PREFLIGHT
    assert "repo1-cipher-type=aes-256-cbc" in outcome.error and "not encrypted" in outcome.error
    assert s3_store.list(dataset="orders") == []
    # `validate` reads the file as pgBackRest does
    assert pgbackrest_ciphers(str(pgbackrest_conf), stanza) == _ciphers(pgbackrest_conf) == {
        1: "none"}


@pytest.fixture
def encrypted_pg(places: Path) -> Any:
    """A PostgreSQL archiving its WAL into an ENCRYPTED pgBackRest repository."""
    server = PostgresServer(places / "enc")
    conf = archive_to_pgbackrest(server, places / "enc-pgbackrest")
    offsite = places / "enc-offsite-repo"
    give_to(offsite)
    conf.write_text(conf.read_text().replace(
        "[global]\n", "[global]\nrepo1-cipher-type=aes-256-cbc\n"
                      "repo1-cipher-pass=contract-test-cipher-pass\n"
                      f"repo2-path={offsite}\nrepo2-cipher-type=aes-256-cbc\n"
                      "repo2-cipher-pass=another-pass-for-the-offsite-repo\n"
                      "archive-timeout=5\n"))
    server.init().start()
    try:
        server.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL); "
                    "INSERT INTO orders SELECT g, 1 FROM generate_series(1, 100) g")
        subprocess.run(as_user(["pgbackrest", f"--config={conf}", "--stanza=main",
                                "stanza-create"]), check=True, capture_output=True)
        yield server, conf
    finally:
        server.stop()


def test_a_continuous_set_checks_archive_push_then_registers_its_encrypted_set(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, encrypted_pg: Any,  # noqa: F811
        workdir: Path, journal: Any) -> None:
    server, conf = encrypted_pg
    spec = _set({"pgbackrest": {"config": str(conf), "stanza": "main", "offsiteRepo": 2}},
                kind="continuous")
    verifier = _verifier(s3_store, store_options, workdir, journal, testRestore=False,
                         pgbackrest={"config": str(conf), "stanza": "main"})
    seen: list[str] = []
    outcome = BackupJob(spec, store=s3_store, offsite=offsite_store, verifier=verifier,
                        actor="alice", progress=lambda p, t: seen.append(f"{p.value}: {t}")
                        ).run()

    assert outcome.ok, outcome.error
    assert "preflight: repositories encrypted; archive-push checked (pgbackrest check)" in seen
    assert pgbackrest_ciphers(str(conf), "main") == _ciphers(conf) == {
        1: "aes-256-cbc", 2: "aes-256-cbc"}
    [taken] = s3_store.list(dataset="orders")
    assert taken.kind == "continuous" and taken.verified is True
    assert taken.meta["pgbackrest"]["cipher"] == "aes-256-cbc"
    # the off-site copy: a set in repo2, verified there, listed by the off-site store
    [copy] = offsite_store.list(dataset="orders")
    assert copy.verified is True and copy.location.endswith("@repo2")
    assert copy.meta["pgbackrest"]["repo"] == 2
    assert "pgbackrest verify (repo2" in copy.verification
    assert outcome.offsite == copy.location

    # WAL archiving broken: the next continuous backup is refused before it is taken
    server.psql("ALTER SYSTEM SET archive_command = 'false'")
    server.psql("SELECT pg_reload_conf()")
    broken = BackupJob(spec, store=s3_store, offsite=offsite_store, verifier=verifier,
                       actor="alice").run()
    assert broken.failed is Phase.PREFLIGHT and "archive-push" in broken.error
    assert [b.id for b in s3_store.list(dataset="orders")] == [taken.id]


def test_a_pgbackrest_sets_offsite_copy_is_a_diff_against_the_offsite_full_and_restores(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, encrypted_pg: Any,  # noqa: F811
        workdir: Path, journal: Any) -> None:
    server, conf = encrypted_pg
    spec = _set({"pgbackrest": {"config": str(conf), "stanza": "main", "offsiteRepo": 2}},
                kind="continuous")
    verifier = _verifier(s3_store, store_options, workdir, journal, testRestore=False,
                         pgbackrest={"config": str(conf), "stanza": "main"})

    def job() -> Backup:
        outcome = BackupJob(spec, store=s3_store, offsite=offsite_store, verifier=verifier,
                            actor="alice").run()
        assert outcome.ok, outcome.error
        time.sleep(1.05)  # backup names carry whole seconds: the next needs a later one
        return offsite_store.list(dataset="orders")[0]

    full = job()
    assert full.meta["pgbackrest"]["type"] == "full" and full.verified is True
    assert "repo2 holds no full set yet" in full.verification
    server.psql("INSERT INTO orders SELECT g, 2 FROM generate_series(101, 250) g")
    diff = job()
    # the second copy sends only what changed: a diff on the proven full, proven with it
    assert diff.meta["pgbackrest"]["type"] == "diff", diff.meta
    assert diff.meta["pgbackrest"]["prior"] == full.meta["pgbackrest"]["label"]
    assert diff.verified is True and "a diff against repo2's full set" in diff.verification
    assert all(b.meta["pgbackrest"]["type"] == "full" for b in s3_store.list(dataset="orders"))

    # restored from the off-site repository alone, the diff holds the rows added since
    restored = PostgresServer(workdir / "from-repo2")
    give_to(restored.base, mode=0o755)
    give_to(restored.data)
    repo2 = ["pgbackrest", f"--config={conf}", "--stanza=main", "--repo=2",
             f"--pg1-path={restored.data}"]
    subprocess.run(as_user([
        *repo2, f"--set={diff.meta['pgbackrest']['label']}",
        "--type=immediate", "--target-action=promote", "--archive-mode=off",
        f"--recovery-option=restore_command={' '.join(repo2)} archive-get %f \"%p\"",
        "restore"]), check=True, capture_output=True)
    restored.init().start()
    try:
        deadline = time.monotonic() + 120
        while restored.psql("SELECT pg_is_in_recovery()") != "f":
            assert time.monotonic() < deadline, "the off-site restore never left recovery"
            time.sleep(0.1)
        assert restored.psql("SELECT count(*) FROM orders") == "250"
    finally:
        restored.stop()

    # the newest off-site copy failed its check: the next copy is a full again
    offsite_store.record_verification(diff.id, {
        "passed": False, "at": time.time(), "durationS": 0.1,
        "summary": "pgbackrest verify failed: (test)", "checks": []}, actor="test")
    again = job()
    assert again.meta["pgbackrest"]["type"] == "full", again.meta
    assert f"the last off-site copy {diff.id} failed its check" in again.verification
