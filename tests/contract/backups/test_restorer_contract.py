"""The in-memory restorer and the real ones keep one contract: only a verified backup is
restored (a permanent error names it, before anything is touched), and a restore's evidence
carries the same keys the reports and the RPO check read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.backups.restore import BaseBackupRestorer
from controller.model import Backup, PermanentError, Target
from controller.secrets import Secrets
from controller.testing import FakeRestorer

EVIDENCE_KEYS = {"backup", "dataset", "host", "path", "rpoSeconds", "rpoMet", "phases",
                 "validation", "seconds", "triggeredBy"}


def _restorers(tmp: Path) -> dict[str, Any]:
    real = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "filesystem", "options": {"path": str(tmp / "catalog")}}}),
        secrets=Secrets())
    fake = FakeRestorer(FakeRestorer.Options(key="contract"))
    return {"memory": fake, "basebackup": real}


@pytest.mark.parametrize("kind", ["memory", "basebackup"])
@pytest.mark.parametrize("verified", [None, False])
def test_an_unverified_backup_is_never_restored(tmp_path: Path, kind: str,
                                                verified: bool | None) -> None:
    restorer = _restorers(tmp_path)[kind]
    backup = Backup(id="b1", dataset="orders", kind="daily", taken_at=0.0, location="x",
                    verified=verified, verification="checksum mismatch" if verified is False
                    else "", meta={"format": "basebackup"})
    target = tmp_path / "data"
    with pytest.raises(PermanentError, match="backup b1 is not verified"):
        restorer.restore(backup=backup, into=Target(host=None, path=str(target)))
    assert not target.exists()


def test_the_fake_restore_evidence_has_the_real_keys(tmp_path: Path) -> None:
    fake = _restorers(tmp_path)["memory"]
    backup = Backup(id="b1", dataset="orders", kind="daily", taken_at=0.0, location="x",
                    verified=True)
    evidence = fake.restore(backup=backup, into=Target(host=None, path="/d",
                                                       options={"rpo": 3600}))
    assert set(evidence) >= EVIDENCE_KEYS and evidence["rpoMet"] is False
