"""The FailoverPlan schema: one pydantic model for YAML plan files and the CRD spec.

A plan file is a Kubernetes-style resource (apiVersion, kind, metadata, spec) so the very
same document can be applied to a cluster as a custom resource. Defaults encode the
emergency plans (`shared/context/emergency-plans.md`): trip below 70 % core availability
or on a complaint surge above 50 % of baseline; levels 1-3; targets measured from
detection. `load_plan` turns every validation problem into `PlanError` lines that name
the field path and the fix.

The field types (`controller.schema`), the services, signals, trigger and levels
(`controller.plan_health`), the `spec.backups` models (`controller.plan_backups`) and
`spec.records` (`controller.plan_records`) are defined below the plan, so that the modules
using them need not import the plan (and through the registry, every step kind); the plan
re-exports those that modules still import from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from controller import registry
from controller.plan_backups import DATASET_PATTERN as DATASET_PATTERN
from controller.plan_backups import BackupSet, backup_warnings, check_backup_sets
from controller.plan_backups import PgBackRestSource as PgBackRestSource
from controller.plan_backups import Retention as Retention
from controller.plan_backups import pgbackrest_ciphers as pgbackrest_ciphers
from controller.plan_health import LevelRule as LevelRule
from controller.plan_health import ProbeSpec as ProbeSpec
from controller.plan_health import Service as Service
from controller.plan_health import Signal as Signal
from controller.plan_health import Trigger as Trigger
from controller.plan_health import default_levels as default_levels
from controller.plan_records import RecordsSpec
from controller.schema import (
    Duration,
    Name,
    PositiveDuration,
    Strict,
    parse_duration,
    unique,
)
from controller.schema import format_duration as format_duration

API_VERSION = "failover.example.io/v1alpha1"


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
    level_target: Literal["respond", "fix"] | None = Field(
        None, alias="levelTarget", description="the step's target also follows the run's "
        "level: its levels[].respondWithin or fixWithin, whichever is tighter, and tightens "
        "when the level rises")
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
    distinct: bool | None = Field(
        None, description="four eyes: the person who requested a run may not approve it; "
        "unset = true when the plan's mode is manual")
    allowed_signers: str | None = Field(
        None, alias="allowedSigners",
        description="an OpenSSH allowed_signers file: `failoverctl approve` then takes only "
        "approvals signed with `ssh-keygen -Y sign -n failover-approval` by a key in it "
        "(controller/signing.py)")
    revoked_keys: str | None = Field(
        None, alias="revokedKeys",
        description="an OpenSSH KRL (ssh-keygen -k) or a file of revoked public keys: an "
        "approval signed by a key in it is refused (ssh-keygen -Y verify -r)")

    @model_validator(mode="after")
    def _revoking(self) -> Approval:
        if self.revoked_keys is not None and self.allowed_signers is None:
            raise ValueError("revokedKeys revokes keys of allowedSigners, which is not set: "
                             "set allowedSigners too, or remove revokedKeys")
        return self

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
    escalation: Literal["exact", "upward"] = Field(
        "exact", description="exact: a run is told through the routes of its level; "
        "upward: through those of its level and every less severe one, each once (a "
        "level-1 run reaches the level-1, 2 and 3 routes)")
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
    records: RecordsSpec | None = Field(
        None, description="where every finished run and drill verdict is archived, and "
        "for how long (`failoverctl history`)")

    @model_validator(mode="after")
    def _consistent(self) -> PlanSpec:
        unique("services", [s.name for s in self.services])
        unique("signals", [s.name for s in self.signals])
        unique("backends", [b.name for b in self.backends])
        unique("steps", [s.name for s in self.steps])
        unique("levels", [str(r.level) for r in self.levels])
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
        signals = {s.name for s in self.signals}
        for i, rule in enumerate(self.levels):
            for name in rule.signals:
                if name not in signals:
                    raise ValueError(
                        f"levels[{i}].signals: no signal named {name!r} in spec.signals "
                        f"(have: {', '.join(sorted(signals)) or 'none'}); add the signal or "
                        "remove the name")
        for i, note in enumerate(self.notifications):
            backend = by_name.get(note.notifier)
            if backend is None or backend.role != "notifier":
                raise ValueError(
                    f"notifications[{i}].notifier: no notifier backend named {note.notifier!r}"
                )
        return self

    @model_validator(mode="after")
    def _backup_sets(self) -> PlanSpec:
        check_backup_sets(self.backups, self.backends)
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

    def rule(self, level: int | None) -> LevelRule | None:
        return next((r for r in self.levels if r.level == level), None)

    def reached(self, level: int) -> list[Notification]:
        """The notification routes a run at `level` goes to (`escalation`): exact, or
        upward (its level's and every less severe level's), each route once."""
        rules = [r for r in self.notifications if r.level == level
                 or (self.escalation == "upward" and r.level > level)]
        seen: set[tuple[str, tuple[str, ...]]] = set()
        out = []
        for rule in sorted(rules, key=lambda r: r.level):
            route = (rule.notifier, tuple(rule.recipients))
            if route not in seen:
                seen.add(route)
                out.append(rule)
        return out

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)


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
        if sig.baseline_query is not None:
            check(f"spec.signals[{i}].baselineQuery", "probe", sig.baseline_query.kind,
                  sig.baseline_query.options)
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
    steps = [f"steps[{i}] ({step.name}).{warning}"
             for i, step in enumerate(plan.spec.steps)
             for warning in registry.step_kind(step.action).warnings(step, plan.spec)]
    return steps + backup_warnings(plan.spec.backups)


def json_schema() -> dict[str, Any]:
    schema = FailoverPlan.model_json_schema(by_alias=True)
    # a service's timeout defaults to min(5s, interval): no fixed default in the schema, or
    # the API server would fill 5s into a plan probing every 200ms and make it invalid
    schema["$defs"]["Service"]["properties"]["timeout"].pop("default", None)
    schema["$defs"]["Step"]["properties"]["action"]["enum"] = registry.step_actions()
    return schema
