"""The directory records store: write-once, read-only files with a SHA-256 beside each; a
damaged record is refused with a message naming its key. And `spec.records` validation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.plan_records import RecordsSpec
from controller.records.store import (
    DirectoryStore,
    RecordDamaged,
    RecordExists,
    RecordMissing,
    RecordsError,
    get_json,
    open_store,
)


def store(root: Path) -> DirectoryStore:
    made = open_store(RecordsSpec.model_validate(
        {"store": {"kind": "directory", "options": {"path": str(root)}}}))
    assert isinstance(made, DirectoryStore)
    return made


def test_a_record_is_written_once_read_only_and_listed_by_prefix(tmp_path: Path) -> None:
    st = store(tmp_path / "records")
    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")
    st.put("runs/web/r1.md", b"# r1", content_type="text/markdown")
    st.put("drills/web/20261205T100000Z-r1.json", b"{}", content_type="application/json")

    assert st.get("runs/web/r1.json") == b'{"a": 1}'
    assert list(st.keys("runs/")) == ["runs/web/r1.json", "runs/web/r1.md"]
    assert list(st.keys("drills/web/")) == ["drills/web/20261205T100000Z-r1.json"]
    assert list(st.keys("incidents/")) == []
    mode = (tmp_path / "records/runs/web/r1.json").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)

    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")  # a retry
    with pytest.raises(RecordExists, match=r"runs/web/r1.json already exists .* never "
                                           r"overwritten"):
        st.put("runs/web/r1.json", b'{"a": 2}', content_type="application/json")
    assert st.get("runs/web/r1.json") == b'{"a": 1}'
    assert not [p for p in (tmp_path / "records/runs/web").iterdir()
                if p.name.startswith(".tmp-")]


def test_a_checksum_left_alone_by_a_crash_belongs_to_no_record(tmp_path: Path) -> None:
    st = store(tmp_path)
    (tmp_path / "runs/web").mkdir(parents=True)
    (tmp_path / "runs/web/r1.json.sha256").write_text("0" * 64)  # died before the record
    assert list(st.keys("runs/")) == []
    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")
    assert st.get("runs/web/r1.json") == b'{"a": 1}'


def test_a_missing_record_and_a_key_outside_the_store_are_refused(tmp_path: Path) -> None:
    st = store(tmp_path)
    with pytest.raises(RecordMissing, match=r"no record runs/web/nope\.json in directory"):
        st.get("runs/web/nope.json")
    for bad in ("../etc/passwd", "/abs", "runs//x", "runs/x.json.sha256"):
        with pytest.raises(ValueError, match="relative path of plain parts"):
            st.put(bad, b"{}", content_type="application/json")


def test_a_damaged_record_names_its_key(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")
    path = tmp_path / "runs/web/r1.json"
    path.chmod(0o644)
    path.write_bytes(b'{"a": 2}')  # changed behind the store's back
    with pytest.raises(RecordDamaged) as err:
        st.get("runs/web/r1.json")
    assert "archived record runs/web/r1.json in directory" in str(err.value)
    assert "is damaged: its SHA-256 is" in str(err.value)

    st.put("runs/web/r2.json", b"not json", content_type="application/json")
    with pytest.raises(RecordDamaged, match=r"record runs/web/r2.json .* damaged: not JSON"):
        get_json(st, "runs/web/r2.json")

    st.put("runs/web/r3.json", b"{}", content_type="application/json")
    os.unlink(tmp_path / "runs/web/r3.json.sha256")
    with pytest.raises(RecordDamaged, match=r"r3\.json .* checksum file r3\.json\.sha256 is "
                                            r"missing"):
        st.get("runs/web/r3.json")


def test_an_unwritable_directory_says_where(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    st = store(tmp_path / "file" / "below")
    with pytest.raises(RecordsError, match=r"cannot write record runs/web/r1.json to "
                                           r"directory .*file/below"):
        st.put("runs/web/r1.json", b"{}", content_type="application/json")


def test_the_records_spec_names_the_field_and_defaults_to_six_months() -> None:
    spec = RecordsSpec.model_validate({"store": {"kind": "s3", "options": {
        "bucket": "records", "objectLock": "GOVERNANCE"}}})
    assert spec.keep == 180 * 86400 and spec.drill_every == 365 * 86400
    assert spec.store.s3().object_lock is not None
    assert json.loads(spec.model_dump_json(by_alias=True))["keep"] == "4320h"
    with pytest.raises(ValidationError, match=r"store \(s3\): options.regoin: Extra inputs"):
        RecordsSpec.model_validate({"store": {"kind": "s3", "options": {
            "bucket": "records", "regoin": "eu"}}})
    with pytest.raises(ValidationError, match="options: give both accessKeyId and "
                                              "secretAccessKey"):
        RecordsSpec.model_validate({"store": {"kind": "s3", "options": {
            "bucket": "records", "accessKeyId": {"fromEnv": "X"}}}})
    with pytest.raises(ValidationError, match="must be more than 0"):
        RecordsSpec.model_validate({"store": {"kind": "directory",
                                              "options": {"path": "/x"}}, "keep": "0s"})
