"""Backup -> verify -> restore against real PostgreSQL 15, moto's S3 server, pgBackRest
and sshd: the emergency plan's "only restore what is proven restorable", end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.backups import crypto, naming
from controller.backups.restore import BaseBackupRestorer, PgBackRestRestorer
from controller.backups.s3 import S3BackupStore
from controller.backups.selection import choose
from controller.backups.take import register_pgbackrest, take_basebackup
from controller.backups.verify import CatalogVerifier
from controller.drill.servers.base import free_port
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.model import PermanentError, Target
from controller.secrets import Secrets
from tests.contract.backups.test_restorer_contract import EVIDENCE_KEYS

from .conftest import KEY_ENV, ROWS, VALIDATION


def _verifier(store: S3BackupStore, options: dict[str, Any], workdir: Path,
              journal: Any, **extra: Any) -> CatalogVerifier:
    return CatalogVerifier(CatalogVerifier.Options.model_validate({
        "store": {"kind": "s3", "options": options}, "scratch": str(workdir),
        "validation": VALIDATION, **extra}), secrets=Secrets(), audit=journal.audit,
        store=store)


def _target(path: Path, **extra: Any) -> Target:
    return Target(host=None, path=str(path), options={
        "port": free_port(), "socketDir": str(path.parent / "sock"), "validation": VALIDATION,
        "rpo": 3600, "actor": "alice", **extra})


def _take(store: S3BackupStore, pg: PostgresServer, when_offset: float = 0.0,
          fmt: str = "plain") -> Any:
    return take_basebackup(store, dataset="orders", kind="daily", actor="cron:nightly",
                           host=str(pg.sock), port=pg.port, fmt=fmt)  # type: ignore[arg-type]


def _assert_clean(evidence: dict[str, Any], *secrets: str) -> None:
    text = json.dumps(evidence)
    for secret in secrets:
        assert secret not in text


def test_backup_verify_restore_over_ssh_records_rpo_and_timings(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        sshd: SshServer, workdir: Path, journal: Any, backup_key: str,
        tmp_path: Path, places: Path) -> None:
    backup = _take(s3_store, source_pg, fmt="tar")
    assert backup.id == naming.backup_name(taken_at=backup.taken_at, dataset="orders",
                                           kind="daily")
    assert backup.location.startswith(f"s3://{store_options['bucket']}/dc-a/orders/")
    assert backup.verified is None and backup.meta["encryption"]["algorithm"] == "AES-256-GCM"

    result = _verifier(s3_store, store_options, workdir, journal).verify(backup=backup)
    assert result["passed"], result["summary"]
    assert [c["name"] for c in result["checks"]] == ["checksums", "decrypt",
                                                     "pg_verifybackup", "test-restore"]
    [listed] = s3_store.list(dataset="orders")
    assert listed.verified is True and listed.meta["lastVerification"]["durationS"] > 0

    chosen, why = choose(s3_store.list(dataset="orders"))
    assert chosen.id == backup.id and "daily" in why

    key_file = tmp_path / "client_key"
    key_file.write_text(sshd.client_key.read_text())
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": store_options},
        "ssh": {"user": sshd.user, "privateKey": {"fromFile": str(key_file)},
                "knownHosts": {"fromFile": str(known)}}}), secrets=Secrets(),
        audit=journal.audit)
    into = Target(host="127.0.0.1", path=str(places / "restored" / "data"), options={
        **_target(places / "restored" / "data").options, "sshPort": sshd.port})
    try:
        evidence = restorer.restore(backup=chosen, into=into)
        assert set(evidence) >= EVIDENCE_KEYS  # the fake restorer's contract
        assert evidence["host"] == "127.0.0.1" and evidence["triggeredBy"] == "alice"
        assert [q["passed"] for q in evidence["validation"]] == [True, True]
        assert evidence["validation"][0]["value"] == str(ROWS)
        assert evidence["archiving"]["archive_mode"] == "off"
        # its verification proved every file of these very bytes with pg_verifybackup:
        # neither hashed nor pg_verifybackup'd again
        at = naming.iso(listed.meta["lastVerification"]["at"])
        proof = (f"every file against backup_manifest by its verification at {at}; these "
                 "are its bytes (stored SHA-256 as cataloged, every chunk authenticated)")
        assert evidence["checksums"] == proof
        assert evidence["pgVerifybackup"] == f"passed at verification: {proof}"
        assert 0 <= evidence["rpoSeconds"] < 3600 and evidence["rpoMet"] is True
        assert set(evidence["phases"]) >= {"fetch", "extract", "start", "promote", "validate"}
        assert "verify" not in evidence["phases"]
        _assert_clean(evidence, backup_key, sshd.client_key.read_text().strip())
    finally:
        restorer.stop(into=into)
    trail = [(a["actor"], a["action"]) for a in journal.audit_trail()]
    assert ("cron:nightly", "backup") in trail and ("verifier", "verify") in trail
    assert trail.count(("alice", "restore")) == 2  # started + finished
    assert backup_key not in json.dumps(journal.audit_trail())


def test_flipped_byte_fails_verification_and_selection_falls_back(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        workdir: Path, journal: Any, tmp_path: Path, places: Path) -> None:
    older = _take(s3_store, source_pg)
    verifier = _verifier(s3_store, store_options, workdir, journal)
    assert verifier.verify(backup=older)["passed"]
    import time

    time.sleep(1.05)  # names carry whole seconds: the second backup needs a later name
    newer = _take(s3_store, source_pg)
    client = s3_store.objects.client  # type: ignore[attr-defined]
    key = newer.meta["objects"][0]["key"]
    full = f"{store_options['prefix']}/{key}"
    data = bytearray(client.get_object(Bucket=store_options["bucket"], Key=full)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=store_options["bucket"], Key=full, Body=bytes(data))

    result = verifier.verify(backup=newer)
    assert not result["passed"]
    assert result["checks"][0]["name"] == "checksums" and "checksum mismatch" in result["summary"]
    listed = {b.id: b for b in s3_store.list(dataset="orders")}
    assert listed[newer.id].verified is False and "checksum mismatch" in \
        listed[newer.id].verification

    chosen, why = choose(list(listed.values()))
    assert chosen.id == older.id
    assert f"skipped newer {newer.id} failed verification" in why

    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "s3", "options": store_options}}), secrets=Secrets(), store=s3_store)
    into = _target(places / "fallback" / "data")
    try:
        evidence = restorer.restore(backup=chosen, into=into)
        assert evidence["backup"] == older.id and evidence["validation"][0]["passed"]
    finally:
        restorer.stop(into=into)
    with pytest.raises(PermanentError, match="not verified"):
        restorer.restore(backup=listed[newer.id], into=_target(places / "never" / "data"))


def test_wrong_key_is_a_clear_error_and_nothing_is_restored(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        workdir: Path, journal: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        places: Path) -> None:
    backup = _take(s3_store, source_pg)
    assert _verifier(s3_store, store_options, workdir, journal).verify(backup=backup)["passed"]
    [backup] = s3_store.list(dataset="orders")
    wrong = __import__("base64").b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("WRONG_KEY", wrong)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": {**store_options,
                                            "encryptionKey": {"fromEnv": "WRONG_KEY"}}}}),
        secrets=Secrets(), audit=journal.audit)
    target = places / "wrongkey" / "data"
    with pytest.raises(crypto.WrongKeyError, match="wrong encryption key") as err:
        restorer.restore(backup=backup, into=_target(target))
    assert wrong not in str(err.value) and os.environ[KEY_ENV] not in str(err.value)
    assert not target.exists() or not any(target.iterdir())
    assert any("FAILED restoring" in a["detail"] for a in journal.audit_trail())


def test_pgbackrest_verify_output_is_parsed_and_restore_promotes(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        pgbackrest_conf: Path, stanza: str, workdir: Path, journal: Any,
        tmp_path: Path, places: Path) -> None:
    backup = register_pgbackrest(s3_store, dataset="orders", kind="continuous",
                                 actor="cron:hourly", config=str(pgbackrest_conf),
                                 stanza=stanza)
    spec = {"pgbackrest": {"config": str(pgbackrest_conf), "stanza": stanza}}
    verifier = _verifier(s3_store, store_options, workdir, journal, **spec)
    result = verifier.verify(backup=backup)
    assert result["passed"], result["summary"]
    assert [c["name"] for c in result["checks"]] == ["checksums", "pgbackrest verify",
                                                     "test-restore"]
    chosen, why = choose(s3_store.list(dataset="orders"))
    assert chosen.id == backup.id and "newest verified continuous" in why

    restorer = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(pgbackrest_conf), "stanza": stanza}), secrets=Secrets(),
        audit=journal.audit)
    into = _target(places / "pgbr" / "data")
    try:
        evidence = restorer.restore(backup=chosen, into=into)
        assert evidence["set"] == backup.meta["pgbackrest"]["label"]
        assert evidence["archiving"]["archive_mode"] == "off"
        assert evidence["validation"][0]["value"] == str(ROWS)
    finally:
        restorer.stop(into=into)

    label = backup.meta["pgbackrest"]["label"]
    repo = pgbackrest_conf.parent / "repo" / "backup" / stanza / label / "pg_data"
    victim = next(p for p in sorted(repo.rglob("*")) if p.is_file() and p.stat().st_size > 8192)
    original = victim.read_bytes()
    data = bytearray(original)
    data[100] ^= 0x01
    victim.write_bytes(bytes(data))
    try:
        raw = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest",
                              f"--config={pgbackrest_conf}", f"--stanza={stanza}", "verify"],
                             capture_output=True, text=True, check=False)
        assert raw.returncode == 0  # the trap: pgBackRest says "ok" by exit code
        result = verifier.verify(backup=backup)
        assert not result["passed"]
        assert "checksum_invalid" in result["summary"] and label in result["summary"]
        assert s3_store.list(dataset="orders")[0].verified is False
    finally:  # the repository is shared by the session's later tests
        victim.write_bytes(original)


def test_unpinned_or_wrong_host_key_is_refused(
        s3_store: S3BackupStore, store_options: dict[str, Any], sshd: SshServer,
        tmp_path: Path) -> None:
    from controller.backups.hosts import SshHost, SshOptions

    key_file = tmp_path / "k"
    key_file.write_text(sshd.client_key.read_text())
    other = SshServer(tmp_path / "other")  # a different host key, never started
    other.port = sshd.port
    from controller.drill.servers.sshd import _keygen

    other.base.mkdir()
    _keygen(other.host_key)
    for known, match in ((other.known_hosts, "does NOT match"),
                         (f"[127.0.0.1]:{sshd.port + 1} " + sshd.known_hosts.split(" ", 1)[1],
                          "not pinned")):
        path = tmp_path / "known"
        path.write_text(known)
        host = SshHost("127.0.0.1", SshOptions.model_validate({
            "user": sshd.user, "port": sshd.port, "privateKey": {"fromFile": str(key_file)},
            "knownHosts": {"fromFile": str(path)}}), secrets=Secrets())
        with pytest.raises(PermanentError, match=match):
            host.run(["true"])
        host.close()


def test_verify_command_verifies_new_backups_once(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        workdir: Path, tmp_path: Path) -> None:
    import yaml

    from tests.e2e.test_cli import EXAMPLE, cli

    backup = _take(s3_store, source_pg)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["spec"]["backends"].append({"name": "verifier", "role": "verifier", "kind": "catalog",
                                     "options": {"store": {"kind": "s3",
                                                           "options": store_options},
                                                 "scratch": str(workdir),
                                                 "validation": VALIDATION}})
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(data))
    journal = tmp_path / "j.db"

    first = cli("verify", str(plan), "--dataset", "orders", "-o", "json", journal=journal,
                timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    [result] = json.loads(first.stdout)
    assert result["backup"] == backup.id and result["passed"] and result["verified"] is True
    [listed] = s3_store.list(dataset="orders")
    assert listed.verified is True
    again = cli("verify", str(plan), "--dataset", "orders", journal=journal)
    assert again.returncode == 0 and "nothing to verify" in again.stdout
    assert "backup-test-secret-value" not in first.stdout + first.stderr

    del data["spec"]["backends"][-1]
    plan.write_text(yaml.safe_dump(data))
    missing = cli("verify", str(plan), journal=journal)
    assert missing.returncode == 2 and "role: verifier" in missing.stderr


def test_a_payload_damaged_after_verification_fails_mid_stream_and_leaves_nothing(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        workdir: Path, journal: Any, places: Path) -> None:
    backup = _take(s3_store, source_pg)
    assert _verifier(s3_store, store_options, workdir, journal).verify(backup=backup)["passed"]
    [backup] = [b for b in s3_store.list(dataset="orders") if b.id == backup.id]
    client = s3_store.objects.client  # type: ignore[attr-defined]
    full = f"{store_options['prefix']}/{backup.meta['objects'][0]['key']}"
    data = bytearray(client.get_object(Bucket=store_options["bucket"], Key=full)["Body"].read())
    assert len(data) > 4 * crypto.DEFAULT_CHUNK  # the damage is chunks into the stream
    data[len(data) * 3 // 4] ^= 0x01
    client.put_object(Bucket=store_options["bucket"], Key=full, Body=bytes(data))
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "s3", "options": store_options}}), secrets=Secrets(), store=s3_store)
    target = places / "damaged" / "data"
    with pytest.raises(crypto.DecryptionError, match="authentication failed"):
        restorer.restore(backup=backup, into=_target(target))
    assert sorted(p.name for p in target.parent.iterdir()) == ["sock"]  # no data.*: nothing
    # (a target holding data keeps it: test_restore_aside.py)


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local", "ssh"])
def test_a_target_that_is_not_empty_is_refused_and_left_as_it_was(
        over_ssh: bool, s3_store: S3BackupStore, store_options: dict[str, Any],
        source_pg: PostgresServer, workdir: Path, journal: Any, sshd: SshServer,
        tmp_path: Path, places: Path) -> None:
    backup = _take(s3_store, source_pg)
    assert _verifier(s3_store, store_options, workdir, journal).verify(backup=backup)["passed"]
    [backup] = [b for b in s3_store.list(dataset="orders") if b.id == backup.id]
    target = places / f"occupied-{over_ssh}" / "data"
    target.mkdir(parents=True)
    (target / "precious").write_text("someone else's data")
    ssh: dict[str, Any] = {}
    into = _target(target)
    if over_ssh:
        (tmp_path / "key").write_text(sshd.client_key.read_text())
        (tmp_path / "known").write_text(sshd.known_hosts)
        ssh = {"ssh": {"user": sshd.user, "privateKey": {"fromFile": str(tmp_path / "key")},
                       "knownHosts": {"fromFile": str(tmp_path / "known")}}}
        into = Target(host="127.0.0.1", path=str(target),
                      options={**into.options, "sshPort": sshd.port})
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "s3", "options": store_options}, **ssh}), secrets=Secrets(),
        store=s3_store)
    with pytest.raises(PermanentError, match=r"is not empty .*precious"):
        restorer.restore(backup=backup, into=into)
    assert [p.name for p in target.iterdir()] == ["precious"]
    assert (target / "precious").read_text() == "someone else's data"


class _Interrupted(BaseException):
    """Stands for an interrupt (Ctrl-C, a stop signal) arriving mid-stream."""


def test_an_interrupted_stream_is_cleaned_up_and_the_interrupt_still_raised(
        places: Path) -> None:
    import io
    import tarfile

    from controller.backups.hosts import LocalHost
    from controller.backups.node import Node, TargetOptions
    from controller.backups.restore import UNTAR_STREAM

    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        for i in range(4):
            data = os.urandom(1 << 20)
            info = tarfile.TarInfo(f"base/file{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = payload.getvalue()

    def stream() -> Any:
        for at in range(0, 3 << 20, 1 << 20):  # three of the four files, then the interrupt
            yield raw[at:at + (1 << 20)]
        raise _Interrupted()

    target = places / "interrupted" / "data"
    node = Node(LocalHost(), str(target),
                TargetOptions.model_validate({"socketDir": str(places / "sock")}))
    with pytest.raises(_Interrupted):
        node.receive([*UNTAR_STREAM, "-C", node.layout.side], stream())
    assert sorted(p.name for p in target.parent.iterdir()) == []  # nor the side directory
