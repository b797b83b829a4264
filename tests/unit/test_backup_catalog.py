"""The catalog on the filesystem store (no servers): naming, layout, checksum
verification, verification state written back, audit; payloads bound to their entry (a
swapped one refused naming both, an old unbound one read on its checksum), the integrity
pass before a restore; pgBackRest verify parsing; and the same listing contract on the
in-memory fake."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.backups import catalog, crypto, naming
from controller.backups.catalog import IntegrityFailed
from controller.backups.filesystem import FilesystemBackupStore
from controller.backups.verify import CatalogVerifier, judge_pgbackrest, parse_pgbackrest_verify
from controller.model import PermanentError
from controller.secrets import Secrets
from controller.testing import FakeBackupStore

OK = """stanza: main
status: ok
  archiveId: 15-1, total WAL checked: 2, total valid WAL: 2
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
  backup: 20261124-212519F, status: valid, total files checked: 965, total valid files: 965
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
"""
BAD = """stanza: main
status: error
  backup: 20261124-212519F, status: invalid, total files checked: 965, total valid files: 964
    checksum invalid: 1
"""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: Any
          ) -> FilesystemBackupStore:
    monkeypatch.setenv("BK_KEY", base64.b64encode(os.urandom(32)).decode())
    return FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
        {"path": str(tmp_path / "catalog"), "encryptionKey": {"fromEnv": "BK_KEY"},
         "chunkSize": 4096}), secrets=Secrets(), audit=journal.audit)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "base").mkdir(parents=True)
    (src / "base" / "1").write_bytes(os.urandom(20_000))
    (src / "PG_VERSION").write_text("15\n")
    return src


def test_names_show_date_dataset_kind_and_round_trip() -> None:
    name = naming.backup_name(taken_at=1_700_000_000, dataset="orders", kind="continuous")
    assert name == "20231114T221320Z_orders_continuous"
    assert naming.parse_name(name) == (1_700_000_000.0, "orders", "continuous")
    assert naming.parse_name("junk") is None
    with pytest.raises(ValueError, match="no underscores"):
        naming.backup_name(taken_at=0, dataset="my_orders", kind="daily")


def test_add_lists_newest_first_with_metadata_and_audit(store: FilesystemBackupStore,
                                                        tmp_path: Path, journal: Any) -> None:
    src = _source(tmp_path)
    a = store.add_directory(src, dataset="orders", kind="daily", taken_at=1000, actor="cron")
    c = store.add_directory(src, dataset="orders", kind="continuous", taken_at=2000,
                            actor="cron")
    store.add_directory(src, dataset="users", kind="daily", taken_at=3000, actor="cron")
    listed = store.list(dataset="orders")
    assert [x.id for x in listed] == [c.id, a.id]
    assert listed[0].verified is None and listed[0].size and listed[0].size > 20_000
    assert (tmp_path / "catalog" / a.id / f"{a.id}.bak").exists()
    entry = json.loads((tmp_path / "catalog" / a.id / "catalog.json").read_text())
    assert entry["encryption"]["algorithm"] == "AES-256-GCM" and len(entry["objects"]) == 1
    assert os.environ["BK_KEY"] not in json.dumps(entry)
    assert b"PG_VERSION" not in (tmp_path / "catalog" / a.id / f"{a.id}.bak").read_bytes()
    assert [r["action"] for r in journal.audit_trail()] == ["backup"] * 3


def test_checksum_mismatch_is_recorded_in_the_catalog(store: FilesystemBackupStore,
                                                      tmp_path: Path) -> None:
    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1000,
                             actor="cron")
    payload = tmp_path / "catalog" / bk.id / f"{bk.id}.bak"
    data = bytearray(payload.read_bytes())
    data[5000] ^= 0x40
    payload.write_bytes(bytes(data))
    verifier = CatalogVerifier(CatalogVerifier.Options.model_validate(
        {"store": {"kind": "filesystem", "options": {"path": "unused"}}}), store=store)
    result = verifier.verify(backup=bk, actor="bob")
    assert result["passed"] is False and "checksum mismatch" in result["summary"]
    assert [c["name"] for c in result["checks"]] == ["checksums"]  # later checks not run
    [listed] = store.list(dataset="orders")
    assert listed.verified is False and listed.meta["lastVerification"]["by"] == "bob"
    json.dumps(result)


def test_payload_decrypts_to_the_tar_stream(store: FilesystemBackupStore,
                                            tmp_path: Path) -> None:
    import tarfile

    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1,
                             actor="t")
    with store.open_payload(bk) as reader, \
            tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        names = [m.name for m in tar]
    assert "./PG_VERSION" in names and "./base/1" in names


def test_store_without_key_says_what_to_configure(tmp_path: Path) -> None:
    s = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
        {"path": str(tmp_path)}))
    with pytest.raises(PermanentError, match="encryptionKey"):
        s.add_directory(tmp_path, dataset="orders", kind="daily", taken_at=1, actor="t")


def test_options_reject_unknown_fields() -> None:
    with pytest.raises(ValueError):
        FilesystemBackupStore.Options.model_validate({"path": "/x", "encrypt": True})


def test_pgbackrest_verify_text_is_parsed() -> None:
    ok = parse_pgbackrest_verify(OK)
    assert ok["status"] == "ok" and ok["backups"]["20261124-212519F"]["valid"] == 965
    assert judge_pgbackrest(ok, "20261124-212519F")[0] is True
    passed, why = judge_pgbackrest(parse_pgbackrest_verify(BAD), "20261124-212519F")
    assert not passed and "checksum_invalid" in why and "964/965" in why
    assert judge_pgbackrest(parse_pgbackrest_verify(""), "x")[0] is False
    assert "not in the verify report" in judge_pgbackrest(ok, "other")[1]


@pytest.mark.parametrize("kind", ["fake", "filesystem"])
def test_list_contract_fake_and_real(kind: str, store: FilesystemBackupStore,
                                     tmp_path: Path) -> None:
    """Same answers from the fake and the real store: newest first, one data set only,
    unverified until a verification is recorded."""
    if kind == "fake":
        backend: Any = FakeBackupStore(FakeBackupStore.Options.model_validate({"backups": [
            {"id": "a", "dataset": "orders", "takenAt": 1000},
            {"id": "b", "dataset": "orders", "takenAt": 2000},
            {"id": "u", "dataset": "users", "takenAt": 3000}]}))
    else:
        src = _source(tmp_path)
        for at, ds in ((1000, "orders"), (2000, "orders"), (3000, "users")):
            store.add_directory(src, dataset=ds, kind="daily", taken_at=at, actor="t")
        backend = store
    listed = backend.list(dataset="orders")
    assert [b.taken_at for b in listed] == [2000, 1000]
    assert all(b.verified is None and b.dataset == "orders" for b in listed)


@pytest.mark.parametrize(("change", "says"), [
    (lambda o: o.update(size="12"), "has `size` '12', not a byte count"),
    (lambda o: o.update(sha256="abc"), "a `sha256` that is not 64 hex digits"),
    (lambda o: o.pop("key"), "objects[0] has no `key`"),
])
def test_an_entry_with_a_malformed_object_fails_checksums_naming_the_field(
        store: FilesystemBackupStore, tmp_path: Path, change: Any, says: str) -> None:
    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1000,
                             actor="cron")
    entry = store.entry(bk.id)
    change(entry["objects"][0])
    store._put_entry(entry)
    [listed] = store.list(dataset="orders")
    verifier = CatalogVerifier(CatalogVerifier.Options.model_validate(
        {"store": {"kind": "filesystem", "options": {"path": "unused"}}}), store=store)
    result = verifier.verify(backup=listed)
    assert result["passed"] is False and not result.get("badInput")
    assert result["checks"][0]["name"] == "checksums" and says in result["summary"]
    assert "take a new backup" in result["summary"]
    assert store.list(dataset="orders")[0].verified is False


@pytest.mark.parametrize(("ref", "says"), [
    ({"fromEnv": "NO_SUCH_BACKUP_KEY"}, "NO_SUCH_BACKUP_KEY is not set; set NO_SUCH_BACKUP_KEY"),
    ({"fromEnv": "BK_NOT_BASE64"}, "is not valid base64; it must hold the base64"),
])
def test_an_unusable_key_is_bad_input_and_nothing_is_recorded(
        store: FilesystemBackupStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        journal: Any, ref: dict[str, str], says: str) -> None:
    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1000,
                             actor="cron")
    monkeypatch.setenv("BK_NOT_BASE64", "not base64 at all!")
    broken = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
        {"path": str(tmp_path / "catalog"), "encryptionKey": ref}), secrets=Secrets(),
        audit=journal.audit)
    verifier = CatalogVerifier(CatalogVerifier.Options.model_validate(
        {"store": {"kind": "filesystem", "options": {"path": "unused"}}}), store=broken)
    [result] = verifier.verify_unverified(dataset="orders")
    assert result["backup"] == bk.id and result["badInput"] is True
    assert "`encryptionKey` is unusable" in result["summary"] and says in result["summary"]
    assert "not base64 at all" not in result["summary"]
    assert store.list(dataset="orders")[0].verified is None
    assert "NOT VERIFIED (bad input)" in journal.audit_trail()[-1]["detail"]


def _payload(tmp_path: Path, name: str) -> Path:
    return tmp_path / "catalog" / name / f"{name}.bak"


def _verifier(store: FilesystemBackupStore) -> CatalogVerifier:
    return CatalogVerifier(CatalogVerifier.Options.model_validate(
        {"store": {"kind": "filesystem", "options": {"path": "unused"}}}), store=store)


def _drain(store: FilesystemBackupStore, backup: Any) -> bytes:
    with store.open_payload(backup) as reader:
        return reader.read()


def test_a_payload_is_bound_to_its_entry_and_the_integrity_pass_says_so(
        store: FilesystemBackupStore, tmp_path: Path) -> None:
    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1000,
                             actor="cron")
    assert bk.meta["encryption"]["payloadFormat"] == 2
    assert store.check_integrity(bk) == (
        f"{bk.id}: {bk.id}/{bk.id}.bak: {bk.meta['objects'][0]['size']} bytes as cataloged; "
        f"payload bound to {bk.id} (data set orders, taken 1970-01-01 00:16:40 UTC) "
        "(format 2)")


def test_swapped_payloads_are_refused_naming_both(store: FilesystemBackupStore,
                                                  tmp_path: Path) -> None:
    src = _source(tmp_path)
    a = store.add_directory(src, dataset="orders", kind="daily", taken_at=1000, actor="cron")
    b = store.add_directory(src, dataset="orders", kind="daily", taken_at=2000, actor="cron")
    pa, pb = _payload(tmp_path, a.id), _payload(tmp_path, b.id)
    da, db = pa.read_bytes(), pb.read_bytes()
    assert len(da) == len(db)  # the same size: only the binding tells them apart
    pa.write_bytes(db)
    pb.write_bytes(da)
    both = (rf"payload stored for backup {a.id} \(data set orders, taken .*\) is the payload "
            rf"of backup {b.id} \(data set orders")
    with pytest.raises(crypto.SwappedPayload, match=both):
        store.check_integrity(a)
    with pytest.raises(crypto.SwappedPayload, match=both):
        _drain(store, a)
    result = _verifier(store).verify(backup=b)
    assert result["passed"] is False and f"is the payload of backup {a.id}" in result["summary"]


def test_a_missing_or_cut_payload_fails_the_integrity_pass(store: FilesystemBackupStore,
                                                            tmp_path: Path) -> None:
    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1000,
                             actor="cron")
    payload = _payload(tmp_path, bk.id)
    payload.write_bytes(payload.read_bytes()[:-10])
    with pytest.raises(IntegrityFailed, match=rf"holds {bk.size - 10} bytes, the catalog "
                                              rf"says {bk.size}"):
        store.check_integrity(bk)
    payload.unlink()
    with pytest.raises(IntegrityFailed, match="is missing from the store"):
        store.check_integrity(bk)
    with pytest.raises(IntegrityFailed, match="is missing from the store"):
        _drain(store, bk)


def test_a_payload_other_than_the_cataloged_one_fails_at_the_end_of_the_stream(
        store: FilesystemBackupStore, tmp_path: Path) -> None:
    bk = store.add_directory(_source(tmp_path), dataset="orders", kind="daily", taken_at=1000,
                             actor="cron")
    entry = store.entry(bk.id)
    entry["objects"][0]["sha256"] = "f" * 64  # e.g. re-uploaded since it was cataloged
    store._put_entry(entry)
    [listed] = store.list(dataset="orders")
    with pytest.raises(crypto.ChecksumMismatch, match=r"the catalog says .* sha256 ffffffff"):
        _drain(store, listed)


def _rewrite_unbound(store: FilesystemBackupStore, tmp_path: Path, bk: Any) -> Any:
    """Make `bk` what the previous controller wrote: a format 1 (unbound) payload, and an
    entry without `payloadFormat`."""
    plain = _drain(store, bk)
    sink = io.BytesIO()
    enc = crypto.EncryptingWriter(sink, store.data_key(), chunk_size=4096, binding=None)
    enc.write(plain)
    enc.close()
    _payload(tmp_path, bk.id).write_bytes(sink.getvalue())
    entry = store.entry(bk.id)
    entry["objects"][0].update(size=enc.stored_size, sha256=enc.sha256.hexdigest())
    del entry["encryption"]["payloadFormat"]
    store._put_entry(entry)
    return next(b for b in store.list(dataset=bk.dataset) if b.id == bk.id)


def test_an_old_unbound_payload_is_read_on_its_checksum_and_said_unbound(
        store: FilesystemBackupStore, tmp_path: Path) -> None:
    src = _source(tmp_path)
    a = _rewrite_unbound(store, tmp_path, store.add_directory(
        src, dataset="orders", kind="daily", taken_at=1000, actor="cron"))
    b = _rewrite_unbound(store, tmp_path, store.add_directory(
        src, dataset="orders", kind="daily", taken_at=2000, actor="cron"))
    assert "payload unbound (format 1)" in store.check_integrity(a)
    assert len(_drain(store, a)) > 20_000
    # swapped, two unbound payloads authenticate: their checksums refuse them
    pa, pb = _payload(tmp_path, a.id), _payload(tmp_path, b.id)
    da = pa.read_bytes()
    pa.write_bytes(pb.read_bytes())
    pb.write_bytes(da)
    with pytest.raises(crypto.ChecksumMismatch):
        _drain(store, a)


def _offsite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FilesystemBackupStore:
    monkeypatch.setenv("BK_OFFSITE_KEY", base64.b64encode(os.urandom(32)).decode())
    return FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
        {"path": str(tmp_path / "offsite"), "encryptionKey": {"fromEnv": "BK_OFFSITE_KEY"},
         "chunkSize": 4096}), secrets=Secrets())


def test_a_copy_staged_as_the_backup_is_taken_is_the_same_tar_under_the_offsite_key(
        store: FilesystemBackupStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offsite = _offsite(tmp_path, monkeypatch)
    backup = store.add_directory(_source(tmp_path), dataset="orders", kind="daily",
                                 taken_at=1_700_000_000, actor="alice", stage_in=offsite)

    staged = store.entry(backup.id)["offsiteStaged"]
    key = naming.payload_key(backup.id)
    assert staged["location"] == offsite.objects.location(key)
    assert staged["keyId"] == crypto.key_id(offsite.data_key()) != backup.meta[
        "encryption"]["keyId"]
    assert offsite.objects.peek(key, 0).size == staged["size"]
    assert offsite.list(dataset="orders") == []  # in no catalog until it is verified
    with store.open_payload(backup) as reader:
        plain = reader.read()
    with offsite.open_raw(key) as raw:
        assert crypto.DecryptingReader(raw, offsite.data_key(), expected=crypto.Expected(
            crypto.Binding(backup.id, "orders", 1_700_000_000), True, staged["sha256"],
            staged["size"])).read() == plain


def test_a_backup_whose_payload_fails_to_complete_leaves_no_staged_copy(
        store: FilesystemBackupStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the staged copy completes beside the payload: when the payload's store then
    # refuses it, the stored copy of a backup that does not exist is removed
    offsite = _offsite(tmp_path, monkeypatch)
    real = store.objects.writer
    stored = threading.Event()
    real_finish = catalog._StagedCopy.finish

    def finish(self: Any) -> Any:
        copy = real_finish(self)
        stored.set()
        return copy

    @contextlib.contextmanager
    def refused_at_the_end(key: str) -> Iterator[Any]:
        with real(key) as sink:
            yield sink
            assert stored.wait(10), "the staged copy never completed"
            raise OSError("the store refused to complete the upload")

    monkeypatch.setattr(catalog._StagedCopy, "finish", finish)
    monkeypatch.setattr(store.objects, "writer", refused_at_the_end)
    with pytest.raises(OSError, match="refused to complete"):
        store.add_directory(_source(tmp_path), dataset="orders", kind="daily",
                            taken_at=1_700_000_000, actor="alice", stage_in=offsite)
    assert [p for p in (tmp_path / "offsite").rglob("*") if p.is_file()] == []


def test_an_offsite_store_failing_mid_stream_drops_the_staged_copy_not_the_backup(
        store: FilesystemBackupStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offsite = _offsite(tmp_path, monkeypatch)
    real = offsite.objects.writer

    class Failing(io.RawIOBase):
        def __init__(self, sink: Any):
            self.sink, self.written = sink, 0

        def write(self, data: Any) -> int:
            self.written += len(data)
            if self.written > 8192:
                raise OSError("no space left on the off-site store")
            return int(self.sink.write(data))

    @contextlib.contextmanager
    def failing(key: str) -> Iterator[Any]:
        with real(key) as sink:
            yield Failing(sink)

    monkeypatch.setattr(offsite.objects, "writer", failing)
    backup = store.add_directory(_source(tmp_path), dataset="orders", kind="daily",
                                 taken_at=1_700_000_000, actor="alice", stage_in=offsite)

    assert "offsiteStaged" not in store.entry(backup.id)
    assert store.list(dataset="orders")[0].id == backup.id
    left = [p for p in (tmp_path / "offsite").rglob("*") if p.is_file()]
    assert left == []  # the half-written copy was removed
