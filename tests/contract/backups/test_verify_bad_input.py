"""`failoverctl verify` on bad input, through the CLI, against real pg_basebackup backups
(PostgreSQL 15) in a filesystem store and in the S3 store on moto's server: no traceback,
the problem named with its field or file and the fix, every backup still tried.

- A catalog entry missing an object's size or SHA-256 cannot be proven intact: it fails
  verification (recorded, so it is never chosen for a restore) and the exit code is 1.
- An encryption key that cannot be used (missing file, unreadable, wrong length) is a
  mistake of configuration, not of any backup: each base backup is reported as bad input,
  nothing is recorded (good backups are never marked failed because of the plan), and
  the exit code is 2; a pgBackRest set, which needs no key, is still verified.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.backups.catalog import CatalogStore
from controller.backups.filesystem import FilesystemBackupStore
from controller.backups.s3 import S3BackupStore
from controller.backups.take import register_pgbackrest, take_basebackup
from controller.drill.servers.postgres import PostgresServer
from controller.secrets import Secrets
from tests.e2e.test_cli import EXAMPLE, cli

from .conftest import VALIDATION


def _key_file(base: Path) -> tuple[Path, str]:
    value = base64.b64encode(os.urandom(32)).decode()
    path = base / "backup.key"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path, value


def _store_options(kind: str, base: Path, key: Path, store_options: dict[str, Any]
                   ) -> dict[str, Any]:
    if kind == "filesystem":
        return {"path": str(base / "catalog"), "encryptionKey": {"fromFile": str(key)}}
    return {**store_options, "encryptionKey": {"fromFile": str(key)}}


def _store(kind: str, options: dict[str, Any]) -> CatalogStore:
    cls = FilesystemBackupStore if kind == "filesystem" else S3BackupStore
    return cls(cls.Options.model_validate(options), secrets=Secrets())


def _take(store: CatalogStore, pg: PostgresServer) -> Any:
    return take_basebackup(store, dataset="orders", kind="daily", actor="cron:nightly",
                           host=str(pg.sock), port=pg.port)


def _plan(tmp: Path, kind: str, options: dict[str, Any], workdir: Path,
          **extra: Any) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["spec"]["backends"].append({
        "name": "verifier", "role": "verifier", "kind": "catalog",
        "options": {"store": {"kind": kind, "options": options}, "scratch": str(workdir),
                    "validation": VALIDATION, **extra}})
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _no_traceback(res: Any) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize(("kind", "field"), [("filesystem", "sha256"), ("filesystem", "size"),
                                             ("s3", "sha256")])
def test_a_catalog_entry_missing_its_checksum_fails_by_name_and_the_others_are_verified(
        kind: str, field: str, source_pg: PostgresServer, workdir: Path, tmp_path: Path,
        store_options: dict[str, Any]) -> None:
    key, _ = _key_file(tmp_path)
    options = _store_options(kind, tmp_path, key, store_options)
    store = _store(kind, options)
    damaged = _take(store, source_pg)
    time.sleep(1.05)  # names carry whole seconds: the second backup needs a later name
    good = _take(store, source_pg)
    entry = store.entry(damaged.id)
    del entry["objects"][0][field]
    store._put_entry(entry)

    res = cli("verify", str(_plan(tmp_path, kind, options, workdir)), "--dataset", "orders",
              "-o", "json", journal=tmp_path / "j.db", timeout=300)
    _no_traceback(res)
    assert res.returncode == 1, res.stdout + res.stderr
    results = {r["backup"]: r for r in json.loads(res.stdout)}
    assert results[good.id]["passed"] is True, results[good.id]["summary"]
    bad = results[damaged.id]
    assert bad["passed"] is False and not bad.get("badInput")
    assert f"objects[0] ({damaged.meta['objects'][0]['key']}) has no `{field}`" in \
        bad["summary"]
    assert "take a new backup" in bad["summary"]
    listed = {b.id: b for b in store.list(dataset="orders")}
    assert listed[good.id].verified is True
    assert listed[damaged.id].verified is False  # recorded: never chosen for a restore

    text = cli("verify", str(_plan(tmp_path, kind, options, workdir)), "--dataset", "orders",
               journal=tmp_path / "j.db")
    _no_traceback(text)
    assert text.returncode == 0 and "nothing to verify" in text.stdout


def _unusable(problem: str, key: Path) -> tuple[list[str], list[str]]:
    """Make `key` unusable; return a prefix for the CLI and what its message must say."""
    if problem == "missing":
        key.unlink()
        return [], [str(key), "No such file or directory",
                    "put the key the backups were written with there"]
    if problem == "short":
        key.write_text(base64.b64encode(os.urandom(16)).decode())
        return [], [str(key), "holds 16 bytes", "needs exactly 32",
                    "the key the backups were written with"]
    key.chmod(0)
    # root reads any file: drop the capabilities that let it, as an unprivileged user is
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
              if os.geteuid() == 0 else [])
    return prefix, [str(key), "Permission denied", f"uid {os.geteuid()}", "mode 0400"]


@pytest.mark.parametrize(("kind", "problem"), [("filesystem", "missing"),
                                               ("filesystem", "unreadable"),
                                               ("filesystem", "short"), ("s3", "missing")])
def test_an_unusable_encryption_key_is_bad_input_and_marks_no_backup_failed(
        kind: str, problem: str, source_pg: PostgresServer, workdir: Path, tmp_path: Path,
        store_options: dict[str, Any]) -> None:
    import subprocess
    import sys

    from tests.e2e.test_cli import ROOT

    key, value = _key_file(tmp_path)
    options = _store_options(kind, tmp_path, key, store_options)
    store = _store(kind, options)
    backup = _take(store, source_pg)
    prefix, says = _unusable(problem, key)
    plan = _plan(tmp_path, kind, options, workdir)
    for output in ("json", "text"):
        res = subprocess.run(
            [*prefix, sys.executable, "-m", "controller", "--journal", str(tmp_path / "j.db"),
             "verify", str(plan), "--dataset", "orders", "-o", output],
            capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ))
        _no_traceback(res)
        assert res.returncode == 2, res.stdout + res.stderr
        assert value not in res.stdout + res.stderr
        if output == "json":
            [result] = json.loads(res.stdout)
            assert result["backup"] == backup.id and result["badInput"] is True
            assert not result["passed"] and result["verified"] is None
            summary = result["summary"]
            assert "`encryptionKey`" in summary and "nothing was recorded" in summary
            for words in says:
                assert words in summary, summary
        else:
            assert res.stdout.startswith(f"[ERROR] orders {backup.id}: not verified: ")
    [listed] = store.list(dataset="orders")
    assert listed.verified is None  # the plan's mistake is not the backup's failure


def test_with_an_unusable_key_a_pgbackrest_set_is_still_verified(
        source_pg: PostgresServer, pgbackrest_conf: Path, stanza: str, workdir: Path,
        tmp_path: Path) -> None:
    key, _ = _key_file(tmp_path)
    options = _store_options("filesystem", tmp_path, key, {})
    store = _store("filesystem", options)
    base = _take(store, source_pg)
    pgbr = register_pgbackrest(store, dataset="orders", kind="continuous", actor="cron:hourly",
                               config=str(pgbackrest_conf), stanza=stanza)
    key.unlink()
    plan = _plan(tmp_path, "filesystem", options, workdir,
                 pgbackrest={"config": str(pgbackrest_conf), "stanza": stanza})
    res = cli("verify", str(plan), "--dataset", "orders", "-o", "json",
              journal=tmp_path / "j.db", timeout=300)
    _no_traceback(res)
    assert res.returncode == 2, res.stdout + res.stderr
    results = {r["backup"]: r for r in json.loads(res.stdout)}
    assert results[pgbr.id]["passed"] is True, results[pgbr.id]["summary"]
    assert results[base.id]["badInput"] is True and "`encryptionKey`" in \
        results[base.id]["summary"]
    listed = {b.id: b for b in store.list(dataset="orders")}
    assert listed[pgbr.id].verified is True and listed[base.id].verified is None
