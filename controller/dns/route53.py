"""Route 53 DNS provider (boto3): one compare-and-swap change batch, then a bounded INSYNC wait.

Owns DNS cutover in an AWS hosted zone. Why each rule:

- **Compare-and-swap**: Route 53 has no prerequisites, but a change batch is atomic and a
  DELETE must name the record set *exactly* as it is, or AWS rejects the whole batch. So
  each swap is DELETE (the old set, exactly as read and as the caller expected) + CREATE
  (the new set) in one batch: if the set changed after our read, AWS refuses and nothing
  changes (`DnsConflict`). When nothing was expected, a lone CREATE is refused by AWS if
  the set exists. The values are also compared before sending, so servers that accept
  CREATE over an existing set (moto) still never overwrite a change.
- **Never empty**: desired values must be non-empty; DELETE+CREATE in one batch is applied
  atomically, so no query sees the name without an answer.
- **Routing policies**: plain sets by default; with `setIdentifier`, the provider reads and
  writes only that weighted/failover set and keeps its Weight, Failover, HealthCheckId and
  other routing attributes (a set it creates takes `weight` or `failover` from options).
- **INSYNC on every path that reports success**: a change is done only when Route 53
  reports it INSYNC (propagated to all of its authoritative servers); the wait backs off
  exponentially (tenacity), is bounded by `syncTimeout` (the timeout names the change id)
  and stops at once when the step is cancelled (`fencing.pause`). The sets are then read
  back. `verify` proves a write that landed earlier (a resumed step, a re-run revert):
  the sets must hold the desired values and an UPSERT of the identical sets, submitted
  now, must go INSYNC. That UPSERT changes no data, and Route 53 applies a zone's changes
  in order, so its INSYNC proves every earlier change to the zone has propagated. (Not
  DELETE+CREATE: moto refuses re-creating a set it saw created; the values were read a
  moment before and are read back after INSYNC.) Proving an absence (a deleted set) uses
  the zone's SOA, the one set every hosted zone has and no plan manages.
- **Compare-and-delete**: `delete` sends DELETE of each set exactly as read, after
  comparing its values with the expected ones; AWS refuses a DELETE whose values differ,
  so a set someone changed is never removed. A set already gone is reported, not an error.
- **Fenced**: every change batch is submitted only after `fencing.check()`, and its
  comment carries the step's fencing token, so CloudTrail shows which attempt wrote.

Credentials come from SecretRefs (or boto3's default chain) and never reach messages.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tenacity import RetryCallState, RetryError, Retrying, retry_if_result

from controller import fencing
from controller.dns import (
    DnsConflict,
    DnsNotServed,
    DnsProvider,
    absent,
    canonical_values,
)
from controller.model import Evidence, PermanentError, Record
from controller.plan import Duration
from controller.secrets import SecretRef, Secrets

_OCTAL = re.compile(r"\\(\d{3})")
_ROUTING = ("SetIdentifier", "Weight", "Region", "GeoLocation", "Failover",
            "MultiValueAnswer", "HealthCheckId", "TrafficPolicyInstanceId",
            "CidrRoutingConfig", "GeoProximityLocation")
_CONFLICT = ("do not match the current values", "but it already exists",
             "but it was not found")


class Route53Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    hosted_zone_id: str = Field(alias="hostedZoneId", min_length=1,
                                description="e.g. Z0123456789ABCDEFGHIJ")
    set_identifier: str | None = Field(
        None, alias="setIdentifier",
        description="manage this weighted/failover record set; empty = plain record sets")
    weight: int | None = Field(None, ge=0, le=255,
                               description="Weight of a weighted set this provider creates")
    failover: Literal["PRIMARY", "SECONDARY"] | None = Field(
        None, description="Failover role of a failover set this provider creates")
    region: str = "us-east-1"
    endpoint_url: str | None = Field(None, alias="endpointUrl")
    access_key_id: SecretRef | None = Field(None, alias="accessKeyId")
    secret_access_key: SecretRef | None = Field(None, alias="secretAccessKey")
    sync_timeout: Duration = Field(300.0, gt=0, alias="syncTimeout",
                                   description="bound on the wait for INSYNC")
    poll_interval: Duration = Field(1.0, gt=0, alias="pollInterval",
                                    description="first wait between get_change calls")
    max_poll_interval: Duration = Field(10.0, gt=0, alias="maxPollInterval")
    timeout: Duration = Field(10.0, gt=0, description="per API call (connect and read)")
    comment: str = "failover controller DNS cutover"

    @field_validator("hosted_zone_id")
    @classmethod
    def _zone_id(cls, value: str) -> str:
        value = value.strip().removeprefix("/hostedzone/")
        if not re.fullmatch(r"[A-Za-z0-9]+", value):
            raise ValueError(f"hostedZoneId: {value!r} is not a hosted zone id; give the id "
                             "from `aws route53 list-hosted-zones`, e.g. Z0123456789ABC")
        return value

    @model_validator(mode="after")
    def _routing(self) -> Route53Options:
        if self.weight is not None and self.failover is not None:
            raise ValueError("weight and failover: a record set is either weighted or "
                             "failover; set only one")
        if (self.weight is not None or self.failover is not None) and not self.set_identifier:
            raise ValueError("weight/failover need setIdentifier: name the record set "
                             "(e.g. setIdentifier: dc-b)")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("accessKeyId and secretAccessKey go together: give both, or "
                             "neither to use the default AWS credential chain")
        return self


class DnsSyncTimeout(DnsNotServed):
    """Route 53 accepted the change but did not report INSYNC within syncTimeout."""


class Route53Busy(RuntimeError):
    """Route 53 asked us to come back later (PriorRequestNotComplete, throttling)."""


def _name(text: str) -> str:
    """Route 53 escapes some characters as octal (\\052 for *); compare plain lowercase."""
    text = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)
    return text.lower().rstrip(".") + "."


def _values(rdtype: str, values: Any) -> frozenset[str]:
    return canonical_values(rdtype, values)


def _error(exc: ClientError) -> tuple[str, str]:
    err = exc.response.get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", ""))


class Route53DnsProvider(DnsProvider):
    """DnsProvider for one hosted zone (and optionally one weighted/failover set)."""

    Options = Route53Options

    def __init__(self, options: Route53Options, *, secrets: Secrets | None = None,
                 client: Any = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = fencing.pause):
        self.options = options
        self._clock, self._sleep = clock, sleep
        if client is None:
            kwargs: dict[str, Any] = {}
            if options.access_key_id and options.secret_access_key:
                s = secrets or Secrets()
                kwargs["aws_access_key_id"] = s.reveal(options.access_key_id).strip()
                kwargs["aws_secret_access_key"] = s.reveal(options.secret_access_key).strip()
            client = boto3.client(
                "route53", region_name=options.region, endpoint_url=options.endpoint_url,
                config=Config(retries={"mode": "standard", "max_attempts": 4},
                              connect_timeout=options.timeout, read_timeout=options.timeout),
                **kwargs)
        self.client = client

    # --- reading ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        zone = self.options.hosted_zone_id
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code, message = _error(exc)
            if code in ("NoSuchHostedZone", "InvalidInput") and what != "change":
                raise PermanentError(f"Route 53 {what} in hosted zone {zone}: {code}: "
                                     f"{message} (check hostedZoneId)") from None
            if code in ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
                        "SignatureDoesNotMatch", "UnrecognizedClientException"):
                raise PermanentError(f"Route 53 {what} in hosted zone {zone} was denied "
                                     f"({code}): check the credentials (accessKeyId/"
                                     "secretAccessKey) and the IAM policy for route53 "
                                     "ListResourceRecordSets, ChangeResourceRecordSets "
                                     "and GetChange") from None
            if code in ("PriorRequestNotComplete", "Throttling", "ThrottlingException"):
                raise Route53Busy(f"Route 53 {what} in hosted zone {zone}: {code}: "
                                  f"{message}; retry later") from None
            raise
        except BotoCoreError as exc:
            raise ConnectionError(f"Route 53 {what} in hosted zone {zone}: {exc}") from None

    def _sets(self, name: str | None) -> list[dict[str, Any]]:
        """Raw record sets at `name` (or all), filtered to this provider's set identifier."""
        kwargs: dict[str, Any] = {"HostedZoneId": self.options.hosted_zone_id}
        if name is not None:
            kwargs["StartRecordName"] = name
        out: list[dict[str, Any]] = []
        while True:
            page = self._call("read", self.client.list_resource_record_sets, **kwargs)
            stop = False
            for rrset in page.get("ResourceRecordSets", []):
                if name is not None and _name(rrset["Name"]) != name:
                    stop = True
                    break
                if rrset.get("SetIdentifier") != self.options.set_identifier:
                    continue
                if "ResourceRecords" not in rrset:  # alias targets carry no values
                    continue
                out.append(rrset)
            if stop or not page.get("IsTruncated"):
                return out
            kwargs["StartRecordName"] = page["NextRecordName"]
            kwargs["StartRecordType"] = page["NextRecordType"]
            if "NextRecordIdentifier" in page:
                kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]
            if name is not None and _name(page["NextRecordName"]) != name:
                return out

    @staticmethod
    def _record(rrset: dict[str, Any]) -> Record:
        return Record(_name(rrset["Name"]), rrset["Type"], int(rrset.get("TTL", 0)),
                      tuple(sorted(str(r["Value"]) for r in rrset["ResourceRecords"])))

    def records(self, *, names: list[str] | None = None) -> list[Record]:
        found: dict[tuple[str, str], Record] = {}
        wanted = sorted({_name(n) for n in names}) if names is not None else [None]
        for name in wanted:
            for rrset in self._sets(name):
                if rrset["Type"] in ("SOA",):
                    continue
                rec = self._record(rrset)
                found[rec.key()] = rec
        return [found[k] for k in sorted(found)]

    # --- writing ---------------------------------------------------------------------------

    def _current(self, records: list[Record]) -> dict[tuple[str, str], dict[str, Any]]:
        """This provider's raw sets at the records' names, by (name, type)."""
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for name in sorted({r.key()[0] for r in records}):
            for rrset in self._sets(name):
                current[(name, rrset["Type"].upper())] = rrset
        return current

    @staticmethod
    def _have(rrset: dict[str, Any] | None, rtype: str) -> frozenset[str]:
        if rrset is None:
            return frozenset()
        return _values(rtype, [r["Value"] for r in rrset["ResourceRecords"]])

    def apply(self, *, expected: list[Record], desired: list[Record]) -> Evidence:
        """DELETE the exact old sets + CREATE the new ones in one batch; wait for INSYNC."""
        for rec in desired:
            if not rec.values:
                raise PermanentError(f"refusing to leave {rec.name} {rec.type} empty: "
                                     "give at least one value")
        exp = {r.key(): r for r in expected if r.values}
        current = self._current(desired)
        mismatched = []
        for rec in desired:
            have_values = self._have(current.get(rec.key()), rec.type)
            want = exp.get(rec.key())
            want_values = _values(rec.type, want.values) if want else frozenset()
            if have_values != want_values:
                mismatched.append(f"{rec.name} {rec.type} is {sorted(have_values)}, "
                                  f"expected {sorted(want_values)}")
        if mismatched:
            raise DnsConflict("; ".join(mismatched) + "; nothing changed")
        changes: list[dict[str, Any]] = []
        before = []
        for rec in desired:
            have = current.get(rec.key())
            new: dict[str, Any] = {"Name": rec.key()[0], "Type": rec.type.upper(),
                                   "TTL": rec.ttl,
                                   "ResourceRecords": [{"Value": v} for v in rec.values]}
            if have is not None:
                before.append(self._record(have).to_json())
                changes.append({"Action": "DELETE", "ResourceRecordSet": have})
                new.update({k: have[k] for k in _ROUTING if k in have})
            elif self.options.set_identifier:
                if self.options.weight is None and self.options.failover is None:
                    raise PermanentError(
                        f"{rec.name} {rec.type} set {self.options.set_identifier!r} does not "
                        "exist; to create it set `weight` or `failover` in the options")
                new["SetIdentifier"] = self.options.set_identifier
                if self.options.weight is not None:
                    new["Weight"] = self.options.weight
                else:
                    new["Failover"] = self.options.failover
            changes.append({"Action": "CREATE", "ResourceRecordSet": new})
        synced = self._change(changes)
        after = self._read_back(desired, synced)
        old_ttl = max((int(h.get("TTL", 0)) for h in current.values()), default=0)
        evidence: Evidence = {
            **self._head(), **synced,
            "before": before, "after": [r.to_json() for r in desired],
            "readBack": [r.to_json() for r in after if r.key() in {d.key() for d in desired}],
        }
        if old_ttl:
            until = _iso(old_ttl)
            evidence.update(oldTtl=old_ttl, clientsMayUseOldUntil=until,
                            note=f"clients may still use the old values until {until}")
        return evidence

    def delete(self, *, expected: list[Record]) -> Evidence:
        """DELETE each set exactly as read, if it still holds `expected`'s values, in one
        batch; wait for INSYNC. Sets already gone are reported and proven absent."""
        for rec in expected:
            if not rec.values:
                raise PermanentError(f"record {rec.name} {rec.type}: give the values it must "
                                     "still hold to be deleted")
        current = self._current(expected)
        mismatched, changes, deleted, gone = [], [], [], []
        for rec in expected:
            have = current.get(rec.key())
            if have is None:
                gone.append(rec.to_json())
                continue
            have_values = self._have(have, rec.type)
            if have_values != _values(rec.type, rec.values):
                mismatched.append(f"{rec.name} {rec.type} is {sorted(have_values)}, "
                                  f"expected {sorted(_values(rec.type, rec.values))}")
            changes.append({"Action": "DELETE", "ResourceRecordSet": have})
            deleted.append(self._record(have).to_json())
        if mismatched:
            raise DnsConflict("; ".join(mismatched) + "; nothing deleted")
        if not changes:  # a re-run: prove the absence like any earlier write
            proof = self.verify(desired=[absent(r) for r in expected])
            return {**proof, "deleted": [], "alreadyAbsent": gone}
        synced = self._change(changes)
        self._read_back([absent(r) for r in expected], synced)
        return {**self._head(), **synced, "deleted": deleted, "alreadyAbsent": gone}

    def verify(self, *, desired: list[Record]) -> Evidence:
        """The sets hold `desired` (no values: absent), and an UPSERT of the identical sets
        (of the zone's SOA when proving only absences) submitted now goes INSYNC."""
        current = self._current(desired)
        wrong = []
        for rec in desired:
            have_values = self._have(current.get(rec.key()), rec.type)
            if have_values != _values(rec.type, rec.values):
                wrong.append(f"{rec.name} {rec.type} is {sorted(have_values)}, expected "
                             f"{sorted(_values(rec.type, rec.values))}")
        if wrong:
            raise DnsConflict(f"hosted zone {self.options.hosted_zone_id}: " + "; ".join(wrong))
        sets = [current[r.key()] for r in desired if r.values]
        by = "the identical record sets"
        if not sets:
            sets, by = [self._soa()], "the zone's SOA, unchanged"
        synced = self._change([{"Action": "UPSERT", "ResourceRecordSet": s} for s in sets])
        self._read_back(desired, synced)
        return {**self._head(), **synced,
                "verified": [r.to_json() for r in desired],
                "proof": f"an UPSERT of {by} went {synced['status']}: Route 53 applies a "
                         "zone's changes in order, so every earlier change has propagated"}

    def _soa(self) -> dict[str, Any]:
        zone = self._call("read", self.client.get_hosted_zone,
                          Id=self.options.hosted_zone_id)["HostedZone"]["Name"]
        page = self._call("read", self.client.list_resource_record_sets,
                          HostedZoneId=self.options.hosted_zone_id, StartRecordName=zone,
                          StartRecordType="SOA", MaxItems="1")
        for rrset in page.get("ResourceRecordSets", []):
            if rrset["Type"] == "SOA" and _name(rrset["Name"]) == _name(zone):
                return dict(rrset)
        raise PermanentError(f"hosted zone {self.options.hosted_zone_id} has no SOA record "
                             f"at {zone}; cannot prove that deleted sets have propagated")

    def _head(self) -> Evidence:
        return {"provider": "route53", "hostedZoneId": self.options.hosted_zone_id,
                "setIdentifier": self.options.set_identifier}

    def _change(self, changes: list[dict[str, Any]]) -> Evidence:
        """Submit one batch and wait for INSYNC: the change's id, status and timing."""
        submitted = self._clock()
        change = self._submit(changes)
        status, polls = self._wait_insync(change["Id"], change.get("Status", "PENDING"),
                                          submitted)
        return {"changeId": change["Id"], "status": status, "polls": polls,
                "submittedAt": _iso(0.0),
                "syncSeconds": round(self._clock() - submitted, 6)}

    def _read_back(self, desired: list[Record], synced: Evidence) -> list[Record]:
        """After INSYNC the sets must still be `desired` (no values: absent)."""
        after = self.records(names=sorted({r.key()[0] for r in desired}))
        got = {r.key(): r for r in after}
        for rec in desired:
            now = got.get(rec.key())
            if _values(rec.type, now.values if now else ()) != _values(rec.type, rec.values):
                raise DnsConflict(f"{rec.name} {rec.type} reads {list(now.values) if now else []} "
                                  f"after change {synced['changeId']} went {synced['status']}; "
                                  "someone changed it after us")
        return after

    def _submit(self, changes: list[dict[str, Any]]) -> dict[str, Any]:
        zone = self.options.hosted_zone_id
        comment = self.options.comment
        if fencing.token() is not None:
            comment = f"{comment} (fencing token {fencing.token()}, {fencing.holder()})"[:256]
        fencing.check()  # right before the write: a step that must stop submits nothing
        try:
            response = self._call(
                "change", self.client.change_resource_record_sets, HostedZoneId=zone,
                ChangeBatch={"Comment": comment, "Changes": changes})
        except ClientError as exc:
            code, message = _error(exc)
            if code == "InvalidChangeBatch" and any(c in message for c in _CONFLICT):
                raise DnsConflict(f"Route 53 rejected the change batch: {message}; the record "
                                  "changed after it was read; nothing changed") from None
            if code in ("InvalidChangeBatch", "InvalidInput", "NoSuchHostedZone",
                        "NoSuchHealthCheck"):
                raise PermanentError(f"Route 53 rejected the change batch for hosted zone "
                                     f"{zone} ({code}): {message}") from None
            raise
        return dict(response["ChangeInfo"])

    def _wait_insync(self, change_id: str, status: str, started: float) -> tuple[str, int]:
        """Poll get_change with exponential backoff until INSYNC, bounded by syncTimeout."""
        if status == "INSYNC":
            return status, 0
        opts = self.options
        deadline = started + opts.sync_timeout
        polls = 0

        def poll() -> str:
            nonlocal polls
            polls += 1
            got = self._call("get_change", self.client.get_change, Id=change_id)
            return str(got["ChangeInfo"]["Status"])

        def wait(state: RetryCallState) -> float:
            step = opts.poll_interval * 2 ** (state.attempt_number - 1)
            return max(0.0, min(step, opts.max_poll_interval, deadline - self._clock()))

        def stop(state: RetryCallState) -> bool:
            return self._clock() >= deadline

        retrying = Retrying(sleep=self._sleep, wait=wait, stop=stop,
                            retry=retry_if_result(lambda s: s != "INSYNC"))
        self._sleep(min(opts.poll_interval, opts.sync_timeout))
        try:
            status = retrying(poll)
        except RetryError:
            raise DnsSyncTimeout(
                f"Route 53 change {change_id} in hosted zone {opts.hosted_zone_id} was "
                f"accepted but still not INSYNC after {opts.sync_timeout:g} s ({polls} "
                f"polls); it will still apply: check `aws route53 get-change --id "
                f"{change_id}` or raise syncTimeout") from None
        return status, polls

    # --- readiness -------------------------------------------------------------------------

    def ready(self) -> str:
        zone = self._call("read", self.client.get_hosted_zone,
                          Id=self.options.hosted_zone_id)["HostedZone"]
        count = len(self._sets(None))
        return (f"hosted zone {zone['Name']} ({self.options.hosted_zone_id}) readable; "
                f"{count} record sets managed by this backend")


def _iso(offset: float) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")
