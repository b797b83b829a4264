"""Shell commands built for SSH are quoted: hostile data-directory paths go through the
whole restore path over the real sshd (SshHost, fabric, host key pinned) and hostile
data-set names through the catalog. Either the command runs with the literal argument
(the data lands in exactly that directory and the restored server answers) or the input
is refused with a clear message; the canary file an injection would create never exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.backups import naming
from controller.backups.restore import BaseBackupRestorer
from controller.backups.s3 import S3BackupStore, S3StoreOptions
from controller.backups.selection import NoRestorableBackup, choose
from controller.model import PermanentError, Target
from controller.secrets import Secrets
from tests.reliability.conftest import TALLY
from tests.reliability.sandbox import ROWS, Backups, stop_restored

CANARY = Path("/tmp/failover-pwned-canary")
HOSTILE = {
    "semicolon": f"x; touch {CANARY}; rm -rf /tmp/x",
    "substitution": f"x$(touch {CANARY})",
    "backticks": f"x`touch {CANARY}`",
    "quotes": f"x'\"; touch {CANARY}; echo \"'",
    "newline": f"x\ntouch {CANARY}",
    "spaces": "x with  spaces",
    "and-and": "x && touch " + str(CANARY),
    "glob-and-vars": "x*$HOME${IFS}?",
}


@pytest.fixture(autouse=True)
def _no_canary() -> None:
    CANARY.unlink(missing_ok=True)


@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_hostile_restore_path_over_ssh(label: str, backups: Backups) -> None:
    TALLY["injection_tried"] += 1
    hostile = HOSTILE[label]
    _, options = backups.target()
    parent = Path(options["socketDir"]).parent / hostile
    parent.mkdir(mode=0o755, parents=True)
    path = str(parent / "data")
    store = S3BackupStore(S3StoreOptions.model_validate(backups.store_options()),
                          secrets=Secrets())
    backup, _ = choose(store.list(dataset="orders"))
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": backups.store_options()},
        "ssh": backups.ssh()}), secrets=Secrets(), store=store)
    into = Target(host="127.0.0.1", path=path,
                  options={**options, "sshPort": backups.sshd.port})
    try:
        evidence = restorer.restore(backup=backup, into=into)
    except PermanentError as exc:  # refused: then it says so clearly, and nothing ran
        assert "restore target path" in str(exc) and "rename it" in str(exc), str(exc)
        assert os.listdir(parent) == []
    else:  # run with the literal argument: the data is in exactly that directory
        stop_restored(path, options)
        assert evidence["path"] == path
        assert (Path(path) / "PG_VERSION").is_file()
        assert evidence["validation"][0]["value"] == str(ROWS)
        # nothing created beside it by a split word (the marker names the restored backup)
        assert sorted(os.listdir(parent)) == ["data", "data.restore-state"]
    assert not CANARY.exists(), f"{label}: the path was run as shell code"
    TALLY["injection_safe"] += 1


@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_hostile_dataset_names_are_refused_or_inert(label: str, backups: Backups) -> None:
    TALLY["injection_tried"] += 1
    hostile = HOSTILE[label]
    with pytest.raises(ValueError, match="lower-case letters, digits and dashes"):
        naming.check_dataset(hostile)  # a backup can never be taken or named with it
    store = S3BackupStore(S3StoreOptions.model_validate(backups.store_options()),
                          secrets=Secrets())
    with pytest.raises(NoRestorableBackup, match="no verified backup"):
        choose(store.list(dataset=hostile))  # and a restore step naming it finds nothing
    assert not CANARY.exists()
    TALLY["injection_safe"] += 1
