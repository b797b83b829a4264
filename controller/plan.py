"""The FailoverPlan schema: one pydantic model for YAML plan files and the CRD spec.

A plan file is a Kubernetes-style resource (apiVersion, kind, metadata, spec) so the very
same document can be applied to a cluster as a custom resource. Defaults encode the
emergency plans (`shared/context/emergency-plans.md`): trip below 70 % core availability
or on a complaint surge above 50 % of baseline; levels 1-3; targets measured from
detection. `load_plan` turns every validation problem into `PlanError` lines that name
the field path and the fix.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller import registry

API_VERSION = "failover.example.io/v1alpha1"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """'90s', '1h', '1h30m', '250ms' or a number of seconds -> seconds (float, >= 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '90s' or '1h', not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"duration {value!r} is negative; use a positive value like '30s'")
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ValueError(
                f"cannot read duration {value!r}; write a number with a unit: "
                "'250ms', '90s', '5m', '1h', '1h30m'"
            )
    else:
        raise ValueError(f"expected a duration such as '90s' or '1h', got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} is not a number of seconds; use e.g. '30s'")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative; use a positive value like '30s'")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {value!r} is longer than 10 years; use at most '3650d'")
    if 0 < seconds < 0.001:
        raise ValueError(f"duration {value!r} is shorter than a millisecond; use 0 or at "
                         "least '1ms'")
    return seconds


MAX_DURATION = 3650 * 86400.0  # longer is a typo, and would overflow dates built from it


def format_duration(seconds: float) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"  # never 1e-07s: it reads back


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"}),
]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 (a zero interval makes a loop spin, a zero "
                         "timeout fails before anything is tried); use a positive duration "
                         "such as '10s'")
    return seconds


# a duration of at least one non-zero number: the API server rejects "0s" with the same rule
POSITIVE_DURATION_PATTERN = (r"^(\d+(\.\d+)?(ms|s|m|h|d))*(\d*[1-9]\d*(\.\d+)?|\d+\.\d*[1-9]\d*)"
                             r"(ms|s|m|h|d)(\d+(\.\d+)?(ms|s|m|h|d))*$")
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": POSITIVE_DURATION_PATTERN}),
]
"""An interval or timeout: 0 would make a probe loop spin or a step fail unstarted."""
Percent = Annotated[float, Field(ge=0, le=100)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", max_length=63)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(Strict):
    name: Name
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Site(Strict):
    name: Name
    description: str = ""


class Sites(Strict):
    primary: Site
    backup: Site

    @model_validator(mode="after")
    def _distinct(self) -> Sites:
        if self.primary.name == self.backup.name:
            raise ValueError("primary and backup sites must have different names")
        return self


class ProbeSpec(Strict):
    kind: str = Field(description="probe kind: http, tcp, dns, postgres, prometheus, memory")
    options: dict[str, Any] = Field(default_factory=dict)


class Service(Strict):
    """One customer channel (web, app/API, hotline, social media...)."""

    name: Name
    core: bool = False
    probes: list[ProbeSpec] = Field(min_length=1)
    interval: PositiveDuration = 10.0
    timeout: PositiveDuration = Field(
        5.0, description="per probe; default 5s, or the interval when that is shorter")
    quorum: int = Field(0, ge=0, description="k-of-n: this many failed probes (vantage "
                        "points) fail a round; 0 = a majority")

    @field_validator("timeout")
    @classmethod
    def _timeout_within_interval(cls, value: float, info: ValidationInfo) -> float:
        # Rounds of one service never overlap, so a longer timeout cannot be honoured: a
        # hung service would be sampled once per timeout and detection would take
        # timeout/interval times longer than the plan says. Refuse it rather than cut it.
        interval = info.data.get("interval")
        if interval is not None and value > interval:
            raise ValueError(
                f"{format_duration(value)} is longer than the interval "
                f"{format_duration(interval)}; a service's rounds never overlap, so a hung "
                f"probe would be sampled only every {format_duration(value)}: use a timeout "
                f"of at most {format_duration(interval)} or raise interval to at least "
                f"{format_duration(value)}")
        return value

    @model_validator(mode="after")
    def _default_timeout(self) -> Service:
        # without a timeout: 5 s, or the interval when that is shorter
        if "timeout" not in self.model_fields_set and self.timeout > self.interval:
            self.timeout = self.interval
        return self

    @model_validator(mode="after")
    def _quorum(self) -> Service:
        if self.quorum > len(self.probes):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.probes)} probes; "
                             "use at most the number of probes (0 = majority)")
        return self


class Signal(Strict):
    """A business signal such as complaint volume, compared against its baseline."""

    name: Name
    probe: ProbeSpec
    baseline: float = Field(gt=0, description="the daily average the surge is measured from")
    surge: Percent = Field(50, description="trip when value exceeds baseline by this %")
    interval: PositiveDuration = 60.0


class Trigger(Strict):
    consecutive_failures: int = Field(3, ge=1, alias="consecutiveFailures")
    availability_floor: Percent = Field(70, alias="availabilityFloor")
    window: Duration = 300.0
    dwell: Duration = 30.0
    clear_after: int = Field(3, ge=1, alias="clearAfter")
    cooldown: Duration = 1800.0


class LevelRule(Strict):
    """Any one condition makes the incident this level; level 1 is the most severe."""

    level: int = Field(ge=1, le=4)
    all_services_down: bool = Field(False, alias="allServicesDown")
    unavailable_at_least: Percent | None = Field(None, alias="unavailableAtLeast")
    core_down_for: Duration | None = Field(None, alias="coreDownFor")
    any_down_for: Duration | None = Field(None, alias="anyDownFor")
    signal_surge: bool = Field(False, alias="signalSurge")


def default_levels() -> list[LevelRule]:
    return [
        LevelRule.model_validate({"level": 1, "allServicesDown": True,
                                  "unavailableAtLeast": 80, "coreDownFor": "4h"}),
        LevelRule.model_validate({"level": 2, "unavailableAtLeast": 50, "anyDownFor": "2h",
                                  "signalSurge": True}),
        LevelRule.model_validate({"level": 3}),
    ]


class Backend(Strict):
    name: Name
    role: Literal["traffic", "dns", "store", "restorer", "verifier", "notifier",
                  "database"]
    kind: str
    options: dict[str, Any] = Field(default_factory=dict)


class Step(Strict):
    # `action` names a step kind (controller.steps), which validation looks up: the schema
    # lists the kinds (json_schema); the kind parses `params` and the result is kept (args)
    name: Name
    action: str
    backend: str | None = Field(None, description="name of a backend in spec.backends")
    target: Duration | None = Field(None, description="time target, measured from detection")
    timeout: PositiveDuration = 600.0
    retries: int = Field(2, ge=0, le=20)
    approval: bool = False
    on_failure: Literal["abort", "continue", "revert"] = Field("abort", alias="onFailure")
    parallel: bool = Field(False, description="manual steps only: open it when the run "
                           "starts and let the automatic steps go on while people work")
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    _args: BaseModel | None = PrivateAttr(None)

    @property
    def args(self) -> BaseModel | None:
        """`params` as parsed by the step's kind (`StepKind.args` sets and reads it)."""
        return self._args

    @args.setter
    def args(self, parsed: BaseModel) -> None:
        self._args = parsed


class RecordSpec(Strict):
    name: str = Field(min_length=1)
    type: str = Field(pattern=r"^[A-Za-z0-9]+$")
    ttl: int = Field(300, ge=0)
    values: list[str] = Field(min_length=1, description="never empty: a name keeps an answer")


class LinkTest(Strict):
    """After the cutover is served by every authoritative server: reach the service through
    each NEW address of the record, with the name as Host header and TLS SNI."""

    kind: Literal["http", "tcp"]
    url: str | None = Field(None, description="http: http(s)://NAME[:port]/path; the request "
                            "goes to the record's new address, Host and SNI stay NAME")
    port: int | None = Field(None, ge=1, le=65535, description="tcp: the port to connect to")
    host: str | None = Field(None, description="http: Host header and SNI (default: the "
                             "url's host)")
    record: str | None = Field(None, description="the A/AAAA record whose new addresses are "
                               "tested (default: the url's host, or the only A/AAAA record)")
    expect_status: list[int] = Field(default_factory=list, alias="expectStatus",
                                     description="http: accepted codes; empty = 2xx")
    timeout: Duration = Field(5.0, gt=0, description="per address")
    verify_tls: bool = Field(True, alias="verifyTls")
    ca_file: str | None = Field(None, alias="caFile")

    @model_validator(mode="after")
    def _kind_fields(self) -> LinkTest:
        if self.kind == "http":
            from urllib.parse import urlsplit

            parts = urlsplit(self.url or "")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("http needs url: http(s)://NAME[:port]/path, e.g. "
                                 "https://www.example.com/health")
        elif self.port is None:
            raise ValueError("tcp needs port, e.g. port: 443")
        return self

    def record_name(self) -> str | None:
        """The owner name whose addresses are tested, normalized (lower case, final dot)."""
        name = self.record
        if name is None and self.kind == "http":
            from urllib.parse import urlsplit

            name = self.host or urlsplit(self.url or "").hostname
        return name.lower().rstrip(".") + "." if name else None


class DnsParams(Strict):
    records: list[RecordSpec] = Field(min_length=1)
    link_test: LinkTest | None = Field(
        None, alias="linkTest", description="after the all-server verification: an HTTP(S) "
        "or TCP check through the new address; the step is done only when it passes too")
    prepare_ttl: int | None = Field(
        None, ge=0, alias="prepareTtl", description="wanted TTL of the records BEFORE a "
        "failover (readiness reports on it; `failoverctl dns-prepare` lowers it)")

    @model_validator(mode="after")
    def _link_record(self) -> DnsParams:
        if self.link_test is not None:
            tested = link_record(self)
            if tested is None:
                raise ValueError("linkTest: no A/AAAA record to test in records; set "
                                 "linkTest.record to the name of an A or AAAA record here")
        return self


def link_record(params: DnsParams) -> RecordSpec | None:
    """The A/AAAA record of `params.records` that the link test goes through."""
    if params.link_test is None:
        return None
    addresses = [r for r in params.records if r.type.upper() in ("A", "AAAA")]
    name = params.link_test.record_name()
    named = [r for r in addresses if r.name.lower().rstrip(".") + "." == name]
    if named:
        return named[0]
    if params.link_test.record is None and len(addresses) == 1:
        return addresses[0]
    return None


class Notification(Strict):
    """A route: runs at exactly this level are told of every update via this notifier."""

    level: int = Field(ge=1, le=4)
    notifier: str
    recipients: list[str] = Field(default_factory=list)
    within: Duration | None = Field(None, description="time target for this notice, from "
                                    "detection; each send is audited as met or MISSED")


class Approval(Strict):
    required: int = Field(1, ge=1)
    approvers: list[str] = Field(default_factory=list, description="empty = anyone")
    expires: Duration | None = Field(None, description="an older approval no longer counts")

    @model_validator(mode="after")
    def _reachable(self) -> Approval:
        named = len(set(self.approvers))
        if named and self.required > named:
            raise ValueError(
                f"required {self.required} is more than the {named} approver"
                f"{'s' if named != 1 else ''} listed ({', '.join(self.approvers)}), so a run "
                f"would wait forever for approval; lower required to at most {named} or add "
                "approvers (an empty list lets anyone approve)")
        return self


class Coordination(Strict):
    """Who may act on the plan besides this journal's lease (`controller/coordination`):
    `host` (default) a lock file every process on this host shares; `etcd` a lease-bound
    key for plan-file deployments on several hosts; `kubernetes` the operator's Lease (the
    CLI then only requests through the FailoverPlan resource)."""

    kind: Literal["host", "etcd", "kubernetes"] = "host"
    options: dict[str, Any] = Field(
        default_factory=dict, description="host: lockDir; etcd: endpoints, prefix, caFile, "
        "certFile, keyFile, username, password; kubernetes: namespace")

    @model_validator(mode="after")
    def _options(self) -> Coordination:
        registry.parse_coordination(self.kind, self.options)  # ValueError names the field
        return self


class Validation(Strict):
    """What the plan demands beyond what is required: refuse what is otherwise warned of."""

    require_data_check: bool = Field(
        False, alias="requireDataCheck",
        description="refuse the plan when a restore step has no validation query "
                    "(params.into.options.validation): a restore that proves no data "
                    "counts as done; when false, `failoverctl validate` warns instead")


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
    import configparser

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


class PlanSpec(Strict):
    sites: Sites
    services: list[Service] = Field(min_length=1)
    signals: list[Signal] = Field(default_factory=list)
    trigger: Trigger = Field(default_factory=Trigger)
    levels: list[LevelRule] = Field(default_factory=default_levels, min_length=1)
    mode: Literal["automatic", "manual"] = "automatic"
    approval: Approval = Field(default_factory=Approval)
    automatic_failback: bool = Field(False, alias="automaticFailback")
    readiness_interval: Duration = Field(300.0, alias="readinessInterval",
                                         description="how often the backup site is checked")
    backends: list[Backend] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    notifications: list[Notification] = Field(default_factory=list)
    run_url: str | None = Field(
        None, alias="runUrl", pattern=r"^https?://\S+$",
        description="base URL of a page per run (dashboard, status page); every notice "
                    "links <runUrl>/<run id>")
    coordination: Coordination = Field(
        default_factory=Coordination,
        description="who may act on the plan across processes and hosts (default: host)")
    validation: Validation = Field(default_factory=Validation)
    backups: list[BackupSet] = Field(
        default_factory=list, description="backups the controller takes (`failoverctl "
        "backup`): per data set its source, kind, stores, retention and test restores")

    @model_validator(mode="after")
    def _consistent(self) -> PlanSpec:
        _unique("services", [s.name for s in self.services])
        _unique("signals", [s.name for s in self.signals])
        _unique("backends", [b.name for b in self.backends])
        _unique("steps", [s.name for s in self.steps])
        _unique("levels", [str(r.level) for r in self.levels])
        if not any(s.core for s in self.services):
            raise ValueError(
                "services: mark at least one service `core: true` (availability is measured "
                "over core services)"
            )
        by_name = {b.name: b for b in self.backends}
        for i, step in enumerate(self.steps):
            where = f"steps[{i}] ({step.name})"
            try:
                kind = registry.step_kind(step.action)
            except registry.UnknownAction as exc:
                raise ValueError(f"{where}.action: {exc}") from None
            if not kind.planned:
                raise ValueError(f"{where}.action: {step.action} steps are generated by the "
                                 "controller (a revert by failback); use onFailure: revert or "
                                 "`failoverctl failback` instead")
            role = kind.role
            if role is not None:
                if step.backend is None:
                    raise ValueError(f"{where}: a {step.action} step needs `backend:`")
                backend = by_name.get(step.backend)
                if backend is None:
                    raise ValueError(
                        f"{where}.backend: no backend named {step.backend!r} in spec.backends "
                        f"(have: {', '.join(sorted(by_name)) or 'none'})"
                    )
                if backend.role != role:
                    raise ValueError(
                        f"{where}.backend: {step.backend!r} is a {backend.role} backend; "
                        f"a {step.action} step needs a {role} backend"
                    )
            try:
                kind.args(step)
            except ValidationError as err:
                raise ValueError("; ".join(
                    f"{where}.params.{p}" for p in _explain(err))) from None
            try:
                kind.check(step, self)
            except ValueError as exc:
                raise ValueError(f"{where}.{exc}") from None
            if step.parallel and not kind.waits_for_person:
                raise ValueError(f"{where}.parallel: only manual (human) steps run in parallel; "
                                 "remove `parallel` or make the step `action: manual`")
            if step.target is not None and step.target <= 0:
                raise ValueError(f"{where}.target: must be positive, e.g. '1h'")
            if step.on_failure == "revert" and not kind.revertible:
                can = [a for a in registry.step_actions() if registry.step_kind(a).revertible]
                raise ValueError(
                    f"{where}.onFailure: only {' and '.join(can)} steps can be reverted; "
                    "use abort or continue"
                )
        for i, note in enumerate(self.notifications):
            backend = by_name.get(note.notifier)
            if backend is None or backend.role != "notifier":
                raise ValueError(
                    f"notifications[{i}].notifier: no notifier backend named {note.notifier!r}"
                )
        return self

    @model_validator(mode="after")
    def _backup_sets(self) -> PlanSpec:
        """Each set names backends of the right role; a continuous set is WAL-archived by
        pgBackRest; its verifier proves the set's own store; a pgBackRest repository on
        this host is encrypted."""
        _unique("backups", [b.dataset for b in self.backups])
        by_name = {b.name: b for b in self.backends}
        for i, bs in enumerate(self.backups):
            where = f"backups[{i}] ({bs.dataset})"
            for field, role in (("store", "store"), ("offsite", "store"),
                                ("verifier", "verifier")):
                name = getattr(bs, field)
                backend = by_name.get(name)
                if backend is None or backend.role != role:
                    have = sorted(b.name for b in self.backends if b.role == role)
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
        return self

    @model_validator(mode="after")
    def _runnable(self) -> PlanSpec:
        """What validates field by field yet cannot run: samples of a signal and a service
        of one name mix; a probe that times out at once."""
        services = {s.name for s in self.services}
        for i, sig in enumerate(self.signals):
            if sig.name in services:
                raise ValueError(
                    f"signals[{i}].name: {sig.name!r} is also a service; a signal's values "
                    "and the service's probe results would be read as one, so the service "
                    "would never count as down; rename the signal, e.g. "
                    f"'{sig.name}-complaints'")
        probes = [(f"services[{i}].probes[{j}]", p) for i, s in enumerate(self.services)
                  for j, p in enumerate(s.probes)]
        probes += [(f"signals[{i}].probe", s.probe) for i, s in enumerate(self.signals)]
        probes += [(f"steps[{i}] ({step.name}).{path}", probe) for i, step in enumerate(self.steps)
                   for path, probe in registry.step_kind(step.action).probes(step)]
        for where, probe in probes:
            value = probe.options.get("timeout")
            if value is None:
                continue
            try:
                seconds = parse_duration(value)
            except ValueError:
                continue  # the probe kind's own model names an unreadable duration
            if seconds <= 0:
                raise ValueError(f"{where}.options.timeout: must be more than 0 (a probe "
                                 "with no time to answer always fails); use e.g. '5s'")
        return self

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)


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


def _unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: duplicate name {name!r}; names must be unique")
        seen.add(name)


class FailoverPlan(Strict):
    api_version: Literal["failover.example.io/v1alpha1"] = Field(
        "failover.example.io/v1alpha1", alias="apiVersion")
    kind: Literal["FailoverPlan"] = "FailoverPlan"
    metadata: Metadata
    spec: PlanSpec

    @property
    def name(self) -> str:
        return self.metadata.name


class PlanError(Exception):
    """A plan that cannot be used; `problems` are 'field.path: what is wrong; the fix'."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _explain(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required field is missing; add it"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        problems.append(f"{_loc(loc)}: {msg}")
    return problems


def parse_plan(data: Any, source: str = "<plan>", *, check_backends: bool = True) -> FailoverPlan:
    if not isinstance(data, dict):
        raise PlanError(source, ["(document): a plan must be a mapping with apiVersion, kind, "
                                 "metadata and spec"])
    try:
        plan = FailoverPlan.model_validate(data)
    except ValidationError as err:
        raise PlanError(source, _explain(err)) from None
    if check_backends:
        problems = check_kinds(plan)
        if problems:
            raise PlanError(source, problems)
    return plan


def check_kinds(plan: FailoverPlan) -> list[str]:
    """Validate every backend's and probe's `options` against its kind's own model."""
    problems: list[str] = []

    def check(path: str, role: str, kind: str, options: dict[str, Any]) -> None:
        try:
            registry.parse_options(role, kind, options)
        except registry.UnknownKind as exc:
            problems.append(f"{path}.kind: {exc}")
        except ValidationError as err:
            problems.extend(f"{path}.options.{p}" for p in _explain(err))
        except ImportError as exc:
            problems.append(f"{path}.kind: {kind!r} needs a missing library ({exc.name}); "
                            "install the matching extra")

    for i, b in enumerate(plan.spec.backends):
        check(f"spec.backends[{i}]", b.role, b.kind, b.options)
    for i, s in enumerate(plan.spec.services):
        for j, p in enumerate(s.probes):
            check(f"spec.services[{i}].probes[{j}]", "probe", p.kind, p.options)
    for i, sig in enumerate(plan.spec.signals):
        check(f"spec.signals[{i}].probe", "probe", sig.probe.kind, sig.probe.options)
    for i, step in enumerate(plan.spec.steps):
        for path, probe in registry.step_kind(step.action).probes(step):
            check(f"spec.steps[{i}].{path}", "probe", probe.kind, probe.options)
    return problems


def load_plan(path: str | Path, *, check_backends: bool = True) -> FailoverPlan:
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise PlanError(source, [f"(file): cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = Path(path).read_bytes()[:exc.start].count(b"\n") + 1
        raise PlanError(source, [f"(file): not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                 f"on line {line}); save the plan as UTF-8"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PlanError(source, [f"(document): not valid YAML at {where}: {problem}"]) from None
    return parse_plan(data, source, check_backends=check_backends)


def plan_warnings(plan: FailoverPlan) -> list[str]:
    """What `failoverctl validate` warns of but accepts, each naming its field."""
    return [f"steps[{i}] ({step.name}).{warning}"
            for i, step in enumerate(plan.spec.steps)
            for warning in registry.step_kind(step.action).warnings(step)] + [
        f"backups[{i}] ({bs.dataset}).source.pgbackrest.config: {pgb.config} is not on this "
        "host, so its encryption (repo-cipher-type) is checked when the backup is taken"
        for i, bs in enumerate(plan.spec.backups)
        if (pgb := bs.source.pgbackrest) is not None and not Path(pgb.config).is_file()]


def json_schema() -> dict[str, Any]:
    schema = FailoverPlan.model_json_schema(by_alias=True)
    # a service's timeout defaults to min(5s, interval): no fixed default in the schema, or
    # the API server would fill 5s into a plan probing every 200ms and make it invalid
    schema["$defs"]["Service"]["properties"]["timeout"].pop("default", None)
    schema["$defs"]["Step"]["properties"]["action"]["enum"] = registry.step_actions()
    return schema
