"""The plan's `spec.backups`: each data set's backup source, stores, retention and checks.

Owns the schema of a backup set and what validates it beyond its own fields: the backends it
names have the right role, the off-site copy goes to another place, its verifier proves its
own store, and a pgBackRest repository on this host is encrypted (read from the stanza's
pgbackrest.conf). Kept apart from `controller.plan`, which includes `BackupSet` in the plan
and calls `check_backup_sets`: the backup modules (`controller.backups`) import these models
without the rest of the plan. Below the plan, it imports only `controller.schema`.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from controller.schema import PositiveDuration, Strict, unique

DATASET_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""A data set's name: it sits between underscores in a backup's name (`naming`)."""


class BaseBackupSource(Strict):
    """`pg_basebackup` from a running PostgreSQL, run on the controller's host."""

    host: str = Field(description="host name, address or unix-socket directory")
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    format: Literal["plain", "tar"] = "plain"
    os_user: str | None = Field("postgres", alias="osUser",
                                description="OS user pg_basebackup runs as when root")
    pg_bin: str = Field("/usr/lib/postgresql/15/bin", alias="pgBin")
    scratch: str | None = Field(None, description="where the copy waits for encryption "
                                "(default: the system's temporary directory)")


class PgBackRestSource(Strict):
    """`pgbackrest backup` of a stanza whose WAL PostgreSQL archives (`archive-push`)."""

    config: str = Field(description="pgbackrest.conf on the controller's host")
    stanza: str = Field(min_length=1)
    type: Literal["full", "diff", "incr"] = "full"
    offsite_repo: int = Field(
        alias="offsiteRepo", ge=2, le=256,
        description="the pgBackRest repository (repoN-*, its own cipher pass) at the "
                    "off-site location: each set is backed up there too and registered "
                    "in the set's off-site store")
    offsite_full_every: PositiveDuration = Field(
        7 * 86400.0, alias="offsiteFullEvery",
        description="the off-site copy is a differential backup against the off-site "
                    "repository's last full one (only what changed since crosses the "
                    "link), and a full one when that full is older than this, was never "
                    "proven there, or the last off-site check failed")
    os_user: str | None = Field("postgres", alias="osUser")
    pgbackrest: str = "pgbackrest"


class BackupSource(Strict):
    """Exactly one of `basebackup` or `pgbackrest`."""

    basebackup: BaseBackupSource | None = None
    pgbackrest: PgBackRestSource | None = None

    @model_validator(mode="after")
    def _one(self) -> BackupSource:
        if (self.basebackup is None) == (self.pgbackrest is None):
            raise ValueError("give exactly one of `basebackup` (a pg_basebackup connection) "
                             "or `pgbackrest` (config and stanza)")
        return self


class Retention(Strict):
    """Prune beyond `keep` backups or older than `maxAge`; never the last verified one."""

    keep: int = Field(7, ge=1, description="verified backups kept per data set and store")
    max_age: PositiveDuration | None = Field(None, alias="maxAge",
                                             description="older backups are pruned")
    stray_after: PositiveDuration = Field(
        2 * 86400.0, alias="strayAfter",
        description="a payload no catalog entry names (an off-site copy staged by a job "
                    "that died before its off-site phase) is removed once it is this old; "
                    "longer than a job's take + verify")


class BackupSet(Strict):
    """One data set's backups: how they are taken, where kept, how long, how proven."""

    dataset: str = Field(json_schema_extra={"pattern": DATASET_PATTERN})
    kind: Literal["continuous", "daily"] = Field(
        description="continuous: WAL archived by pgBackRest plus a base backup every "
                    "`every`; daily: a full (or incremental) backup every `every`")
    source: BackupSource
    store: str = Field(description="store backend the backups are written to")
    offsite: str = Field(description="store backend of the off-site copy (another site, "
                         "bucket or endpoint, with its own encryptionKey)")
    verifier: str = Field(description="verifier backend that proves each backup "
                          "right after it is taken")
    every: PositiveDuration = Field(86400.0, description="a backup is due this long after "
                                    "the newest verified one")
    rpo: PositiveDuration | None = Field(
        None, description="readiness fails when the newest verified backup (or off-site "
                          "copy) is older; default: every + 2h")
    retention: Retention = Field(default_factory=Retention)
    test_restore_every: PositiveDuration = Field(
        7 * 86400.0, alias="testRestoreEvery",
        description="readiness fails when the last passed test restore is older")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if not re.match(DATASET_PATTERN, value):
            raise ValueError(f"{value!r} must be lower-case letters, digits and dashes, at "
                             "most 63 (no underscores: they separate date, data set and kind "
                             "in a backup's name), e.g. 'user-accounts'")
        return value

    @property
    def rpo_budget(self) -> float:
        return self.every + 7200.0 if self.rpo is None else self.rpo


def pgbackrest_ciphers(config: str, stanza: str) -> dict[int, str]:
    """The repositories `config` gives `stanza` ([global] and the stanza's sections), each
    with its `repoN-cipher-type` ("none" when unset)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with open(config, encoding="utf-8") as fh:
        parser.read_file(fh)
    options: dict[str, str] = {}
    for section in parser.sections():
        if section.split(":")[0] in ("global", stanza):
            options.update(parser[section])
    repos = {int(m.group(1)) for key in options
             if (m := re.match(r"^repo(\d+)-(path|type|host)$", key))} or {1}
    return {n: options.get(f"repo{n}-cipher-type", "none") for n in sorted(repos)}


class BackendRef(Protocol):
    """What a backup set's check reads of a plan's backend (`controller.plan.Backend`)."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def options(self) -> dict[str, Any]: ...


def check_backup_sets(backups: Sequence[BackupSet], backends: Sequence[BackendRef]) -> None:
    """Each set names backends of the right role; a continuous set is WAL-archived by
    pgBackRest; its verifier proves the set's own store; a pgBackRest repository on
    this host is encrypted. ValueError names the field and the fix."""
    unique("backups", [b.dataset for b in backups])
    by_name = {b.name: b for b in backends}
    for i, bs in enumerate(backups):
        where = f"backups[{i}] ({bs.dataset})"
        for field, role in (("store", "store"), ("offsite", "store"),
                            ("verifier", "verifier")):
            name = getattr(bs, field)
            backend = by_name.get(name)
            if backend is None or backend.role != role:
                have = sorted(b.name for b in backends if b.role == role)
                raise ValueError(f"{where}.{field}: no {role} backend named {name!r} in "
                                 f"spec.backends (have: {', '.join(have) or 'none'})")
        if bs.offsite == bs.store:
            raise ValueError(f"{where}.offsite: the off-site copy must go to another "
                             f"store than {bs.store!r} (another site, bucket or endpoint)")
        store, offsite = by_name[bs.store], by_name[bs.offsite]
        if store.kind == offsite.kind and _same_place(store.options, offsite.options):
            raise ValueError(f"{where}.offsite: {bs.offsite!r} and {bs.store!r} are the "
                             "same place; point the off-site store at another bucket, "
                             "endpoint or directory")
        checked = by_name[bs.verifier].options.get("store")
        if checked != {"kind": store.kind, "options": store.options}:
            raise ValueError(f"{where}.verifier: {bs.verifier!r} verifies another store "
                             f"than {bs.store!r}; set its options.store to the store's "
                             "kind and options")
        if bs.kind == "continuous" and bs.source.pgbackrest is None:
            raise ValueError(f"{where}.source: a continuous set is WAL-archived by "
                             "pgBackRest; give `source.pgbackrest` (config, stanza), or "
                             "make it `kind: daily`")
        pgb = bs.source.pgbackrest
        if pgb is not None and Path(pgb.config).is_file():
            _check_pgbackrest(f"{where}.source.pgbackrest", pgb)


def _check_pgbackrest(where: str, pgb: PgBackRestSource) -> None:
    """Every repository of the stanza encrypted; the off-site one configured."""
    try:
        ciphers = pgbackrest_ciphers(pgb.config, pgb.stanza)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}.config: cannot read {pgb.config}: {exc}") from None
    plain = [f"repo{n}" for n, cipher in ciphers.items() if cipher == "none"]
    if plain:
        raise ValueError(
            f"{where}.config: {pgb.config} keeps backups unencrypted: {', '.join(plain)} "
            f"without a cipher; add `{plain[0]}-cipher-type=aes-256-cbc` and a "
            f"`{plain[0]}-cipher-pass` (or PGBACKREST_{plain[0].upper()}_CIPHER_PASS in the "
            "job's environment) and create the stanza again: an existing repository cannot "
            "be encrypted in place")
    if pgb.offsite_repo not in ciphers:
        raise ValueError(
            f"{where}.offsiteRepo: {pgb.config} configures no repo{pgb.offsite_repo} "
            f"(has {', '.join(f'repo{n}' for n in ciphers)}); add `repo{pgb.offsite_repo}-"
            "path` (or -host) at the off-site location, with its own cipher pass")


def _same_place(a: dict[str, Any], b: dict[str, Any]) -> bool:
    where = ("bucket", "prefix", "endpointUrl", "path")
    return all(a.get(k) == b.get(k) for k in where)


def backup_warnings(backups: Sequence[BackupSet]) -> list[str]:
    """What `failoverctl validate` warns of but accepts: an encryption not checkable here."""
    return [
        f"backups[{i}] ({bs.dataset}).source.pgbackrest.config: {pgb.config} is not on this "
        "host, so its encryption (repo-cipher-type) is checked when the backup is taken"
        for i, bs in enumerate(backups)
        if (pgb := bs.source.pgbackrest) is not None and not Path(pgb.config).is_file()]
