"""Taking backups into the catalog: `pg_basebackup` payloads and pgBackRest sets.

Owns the backup side of the catalog: `take_basebackup` runs `pg_basebackup` (plain or
tar, WAL streamed, SHA-256 manifest) into a scratch directory and stores it through the
streamed encryption of `CatalogStore.add_directory`; `register_pgbackrest` runs
`pgbackrest backup` (or takes an existing set) and catalogs it with its label, stop time
and size from `pgbackrest info --output=json`. Both are audited with who triggered them.
`check_pgbackrest` refuses, before any backup, a repository that is not encrypted
(`repo-cipher-type`) and, for a continuous set, a stanza whose WAL archiving
(`archive-push`) `pgbackrest check` does not prove working. Verify right after (the
emergency plans demand it): see `verify.CatalogVerifier`, and `job` for the whole cycle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from controller.backups.catalog import CatalogStore
from controller.backups.hosts import CommandError, LocalHost
from controller.model import Backup, PermanentError

PG_BIN = "/usr/lib/postgresql/15/bin"


def as_user(user: str | None, argv: list[str]) -> list[str]:
    """`runuser -u USER --` first when we are root and USER is someone else."""
    if user and os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--", *argv]
    return argv


def take_basebackup(store: CatalogStore, *, dataset: str, kind: str, actor: str,
                    host: str, port: int, user: str = "postgres",
                    fmt: Literal["plain", "tar"] = "plain", scratch: str | None = None,
                    pg_bin: str = PG_BIN, os_user: str | None = "postgres",
                    stage_in: CatalogStore | None = None) -> Backup:
    """pg_basebackup -> encrypted catalog payload; the scratch copy is removed after.
    `stage_in`: the off-site store, which gets its copy in the same pass (see
    `CatalogStore.add_directory`)."""
    base = Path(tempfile.mkdtemp(prefix="basebackup-", dir=scratch))
    try:
        if os.geteuid() == 0 and os_user:
            import pwd

            pw = pwd.getpwnam(os_user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        target = base / "backup"
        started = time.time()
        try:
            LocalHost().run(as_user(os_user, [
                f"{pg_bin}/pg_basebackup", "-h", host, "-p", str(port), "-U", user,
                "-D", str(target), "-F", fmt[0], "-X", "stream", "-c", "fast", "--no-sync",
                "--manifest-checksums=SHA256", "-l", f"failover {dataset} {kind}"]),
                timeout=24 * 3600)
        except CommandError as exc:
            raise PermanentError(f"pg_basebackup of {dataset} failed: {exc}") from None
        return store.add_directory(target, dataset=dataset, kind=kind, taken_at=started,
                                   actor=actor, source_info={"host": host, "port": port,
                                                             "tool": "pg_basebackup",
                                                             "format": fmt},
                                   stage_in=stage_in)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def check_pgbackrest(*, config: str, stanza: str, archiving: bool,
                     os_user: str | None = "postgres", pgbackrest: str = "pgbackrest") -> str:
    """Refuse an unencrypted repository (every repo's `cipher` in `pgbackrest info`) and,
    when `archiving`, a stanza whose `pgbackrest check` (a WAL switch archived through
    `archive-push`) fails; return what was checked."""
    base = [pgbackrest, f"--config={config}", f"--stanza={stanza}"]
    try:
        info = json.loads(LocalHost().run(as_user(os_user, [*base, "--output=json", "info"])).out)
    except CommandError as exc:
        raise PermanentError(f"pgbackrest info of stanza {stanza} failed: {exc}") from None
    repos = (info[0].get("repo") if info else None) or []
    plain = [f"repo{r.get('key')}" for r in repos if r.get("cipher", "none") == "none"]
    if not repos or plain:
        first = (plain or ["repo1"])[0]
        raise PermanentError(
            f"pgBackRest repository {', '.join(plain or [first])} of stanza {stanza} "
            f"({config}) is not encrypted: set `{first}-cipher-type=aes-256-cbc` and a "
            f"`{first}-cipher-pass` (a new, encrypted repository: stanza-create again); "
            "backups are encrypted at rest, so none is taken")
    if not archiving:
        return f"repositories encrypted ({', '.join(r['cipher'] for r in repos)})"
    try:
        LocalHost().run(as_user(os_user, [*base, "--log-level-console=error", "check"]),
                        timeout=600)
    except CommandError as exc:
        raise PermanentError(f"pgbackrest check of stanza {stanza} failed: WAL is not being "
                             f"archived (archive-push), so a continuous backup would lose "
                             f"data: {exc}") from None
    return "repositories encrypted; archive-push checked (pgbackrest check)"


def register_pgbackrest(store: CatalogStore, *, dataset: str, kind: str, actor: str,
                        config: str, stanza: str, backup_type: str | None = "full",
                        os_user: str | None = "postgres",
                        pgbackrest: str = "pgbackrest", repo: int | None = None) -> Backup:
    """Run `pgbackrest backup --type=...` (None: take the newest set) into `repo` (None:
    pgBackRest's default) and catalog it."""
    base = [pgbackrest, f"--config={config}", f"--stanza={stanza}",
            *([f"--repo={repo}"] if repo is not None else [])]
    try:
        if backup_type is not None:
            LocalHost().run(as_user(os_user, [*base, f"--type={backup_type}",
                                          "--log-level-console=error", "backup"]),
                            timeout=24 * 3600)
        info = json.loads(LocalHost().run(as_user(os_user, [*base, "--output=json", "info"])).out)
    except CommandError as exc:
        raise PermanentError(f"pgbackrest backup of {dataset} failed: {exc}") from None
    sets = info[0].get("backup") or []
    if not sets:
        raise PermanentError(f"pgBackRest stanza {stanza} holds no backup set")
    newest = sets[-1]
    stored = (info[0].get("repo") or [{}])[0]
    return store.register(
        dataset=dataset, kind=kind, taken_at=float(newest["timestamp"]["stop"]), actor=actor,
        format="pgbackrest",
        location=f"pgbackrest:{stanza}/{newest['label']}" + (f"@repo{repo}" if repo else ""),
        size=int(newest["info"]["repository"]["size"]),
        details={"label": newest["label"], "type": newest["type"],
                 "prior": newest.get("prior"), "stanza": stanza,
                 "config": config, "lsn": newest.get("lsn"), "archive": newest.get("archive"),
                 "cipher": stored.get("cipher", info[0].get("cipher")), "repo": repo})
