"""Route 53 provider with botocore's Stubber: what moto does not model.

- the change batch is DELETE of the exact old set + CREATE of the new one, in one call;
- PENDING -> INSYNC is waited for with growing, bounded sleeps (injected clock, no real
  waiting), and a change that stays PENDING times out naming the change id;
- AWS's rejections (values changed, set already exists) become DnsConflict; other
  rejections, throttling and denied credentials each become a clear, typed error that
  never quotes a secret;
- `verify` proves INSYNC with a no-op UPSERT of the sets exactly as read (PENDING until
  INSYNC, or a timeout naming the change); `delete` sends DELETE of the exact set;
- a cancelled step submits no change, and a step's change carries its fencing token.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from controller import fencing
from controller.dns import DnsConflict, DnsNotServed
from controller.dns.route53 import DnsSyncTimeout, Route53Busy, Route53DnsProvider, Route53Options
from controller.model import PermanentError, Record
from controller.testing import FakeClock

ZONE = "Z0123456789ABC"
NAME = "www.example.test."
OLD = {"Name": NAME, "Type": "A", "TTL": 300, "ResourceRecords": [{"Value": "192.0.2.1"}]}


class Harness:
    def __init__(self, **options: Any):
        self.client = boto3.client("route53", region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        self.stub = Stubber(self.client)
        self.clock = FakeClock(0.0)
        self.sleeps: list[float] = []
        opts = Route53Options.model_validate({"hostedZoneId": ZONE, "pollInterval": "1s",
                                              "maxPollInterval": "4s", **options})
        self.provider = Route53DnsProvider(opts, client=self.client, clock=self.clock.now,
                                           sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)

    def listing(self, *sets: dict[str, Any], name: str = NAME) -> None:
        self.stub.add_response("list_resource_record_sets",
                               {"ResourceRecordSets": list(sets), "IsTruncated": False,
                                "MaxItems": "100"},
                               {"HostedZoneId": ZONE, "StartRecordName": name})

    def change(self, changes: list[dict[str, Any]], status: str = "PENDING",
               comment: str = "failover controller DNS cutover") -> None:
        self.stub.add_response(
            "change_resource_record_sets",
            {"ChangeInfo": {"Id": "/change/C1", "Status": status,
                            "SubmittedAt": "2026-01-01T00:00:00Z"}},
            {"HostedZoneId": ZONE, "ChangeBatch": {"Comment": comment, "Changes": changes}})

    def get_change(self, status: str) -> None:
        self.stub.add_response("get_change", {"ChangeInfo": {
            "Id": "/change/C1", "Status": status, "SubmittedAt": "2026-01-01T00:00:00Z"}},
            {"Id": "/change/C1"})

    def reject(self, code: str, message: str, operation: str = "change_resource_record_sets",
               status: int = 400) -> None:
        self.stub.add_client_error(operation, service_error_code=code,
                                   service_message=message, http_status_code=status)


def new_set(value: str = "198.51.100.1", ttl: int = 60, **routing: Any) -> dict[str, Any]:
    return {"Name": NAME, "Type": "A", "TTL": ttl, "ResourceRecords": [{"Value": value}],
            **routing}


def swap(h: Harness) -> dict[str, Any]:
    with h.stub:
        return h.provider.apply(expected=[Record(NAME, "A", 300, ("192.0.2.1",))],
                                desired=[Record(NAME, "A", 60, ("198.51.100.1",))])


def test_one_batch_deletes_the_exact_old_set_then_waits_pending_to_insync() -> None:
    h = Harness()
    h.listing(OLD)
    h.change([{"Action": "DELETE", "ResourceRecordSet": OLD},
              {"Action": "CREATE", "ResourceRecordSet": new_set()}])
    for status in ("PENDING", "PENDING", "PENDING", "INSYNC"):
        h.get_change(status)
    h.listing(new_set())
    evidence = swap(h)
    h.stub.assert_no_pending_responses()
    assert evidence["status"] == "INSYNC" and evidence["polls"] == 4
    assert evidence["changeId"] == "/change/C1"
    assert h.sleeps == [1.0, 1.0, 2.0, 4.0]  # first wait, then exponential, capped at 4 s
    assert evidence["syncSeconds"] == 8.0
    assert evidence["before"] == [{"name": NAME, "type": "A", "ttl": 300,
                                   "values": ["192.0.2.1"]}]


def test_a_change_that_stays_pending_times_out_naming_the_change() -> None:
    h = Harness(syncTimeout="10s")
    h.listing(OLD)
    h.change([{"Action": "DELETE", "ResourceRecordSet": OLD},
              {"Action": "CREATE", "ResourceRecordSet": new_set()}])
    for _ in range(20):
        h.get_change("PENDING")
    with pytest.raises(DnsSyncTimeout, match=r"change /change/C1 in hosted zone "
                                             r"Z0123456789ABC was accepted but still not "
                                             r"INSYNC after 10 s"):
        swap(h)
    assert sum(h.sleeps) == pytest.approx(10.0)  # bounded: never sleeps past the deadline


def test_aws_rejecting_the_delete_because_values_changed_is_a_conflict() -> None:
    h = Harness()
    h.listing(OLD)
    h.reject("InvalidChangeBatch", "[Tried to delete resource record set [name='www.example"
             ".test.', type='A'] but the values provided do not match the current values]")
    with pytest.raises(DnsConflict, match=r"do not match the current values.*nothing changed"):
        swap(h)
    h.stub.assert_no_pending_responses()


def test_aws_rejecting_a_create_over_an_existing_set_is_a_conflict() -> None:
    h = Harness()
    h.listing()
    h.reject("InvalidChangeBatch", "[Tried to create resource record set [name='www.example"
             ".test.', type='A'] but it already exists]")
    with pytest.raises(DnsConflict, match="already exists"), h.stub:
        h.provider.apply(expected=[], desired=[Record(NAME, "A", 60, ("198.51.100.1",))])


def test_a_stale_expectation_is_caught_before_sending() -> None:
    h = Harness()
    h.listing(new_set("203.0.113.9", ttl=300))
    with pytest.raises(DnsConflict, match=r"is \['203\.0\.113\.9'\], expected "
                                          r"\['192\.0\.2\.1'\]; nothing changed"):
        swap(h)
    h.stub.assert_no_pending_responses()  # no change_resource_record_sets call was made


def test_other_batch_rejections_are_permanent_and_quote_aws() -> None:
    h = Harness()
    h.listing(OLD)
    h.reject("InvalidChangeBatch", "RRSet with DNS name www.example.test. is not permitted "
             "in zone other.test.")
    with pytest.raises(PermanentError, match=r"InvalidChangeBatch.*not permitted in zone"):
        swap(h)


def test_prior_request_not_complete_is_retryable_not_permanent() -> None:
    h = Harness()
    h.listing(OLD)
    h.reject("PriorRequestNotComplete", "The request was rejected because Route 53 was "
             "still processing a prior request.")
    with pytest.raises(Route53Busy) as caught:
        swap(h)
    assert not isinstance(caught.value, PermanentError)


def test_denied_credentials_say_what_to_fix_without_the_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETVALUE"
    monkeypatch.setenv("R53_TEST_SECRET", secret)
    h = Harness(accessKeyId={"fromEnv": "R53_TEST_SECRET"},
                secretAccessKey={"fromEnv": "R53_TEST_SECRET"})
    h.reject("AccessDenied", "User is not authorized", operation="list_resource_record_sets",
             status=403)
    with pytest.raises(PermanentError) as caught, h.stub:
        h.provider.records(names=[NAME])
    assert "check the credentials" in str(caught.value) and secret not in str(caught.value)


def test_set_identifier_keeps_routing_attributes_and_ignores_siblings() -> None:
    h = Harness(setIdentifier="dc-b")
    sibling = new_set("192.0.2.1", ttl=60, SetIdentifier="dc-a", Weight=100)
    mine = new_set("198.51.100.1", ttl=60, SetIdentifier="dc-b", Weight=0,
                   HealthCheckId="11111111-2222-3333-4444-555555555555")
    h.listing(sibling, mine)
    h.change([{"Action": "DELETE", "ResourceRecordSet": mine},
              {"Action": "CREATE", "ResourceRecordSet": new_set(
                  "198.51.100.2", ttl=30, SetIdentifier="dc-b", Weight=0,
                  HealthCheckId="11111111-2222-3333-4444-555555555555")}], status="INSYNC")
    h.listing(sibling, new_set("198.51.100.2", ttl=30, SetIdentifier="dc-b", Weight=0))
    with h.stub:
        evidence = h.provider.apply(expected=[Record(NAME, "A", 60, ("198.51.100.1",))],
                                    desired=[Record(NAME, "A", 30, ("198.51.100.2",))])
    h.stub.assert_no_pending_responses()
    assert evidence["polls"] == 0 and evidence["readBack"][0]["values"] == ["198.51.100.2"]


def test_empty_desired_is_refused_before_any_call() -> None:
    h = Harness()
    with pytest.raises(PermanentError, match=r"refusing to leave www\.example\.test\. A empty"), \
            h.stub:
        h.provider.apply(expected=[], desired=[Record(NAME, "A", 60, ())])


# --- verify: INSYNC proof of a write that landed earlier ------------------------------------


def test_verify_upserts_the_set_exactly_as_read_and_waits_for_insync() -> None:
    h = Harness(setIdentifier="dc-b")
    mine = new_set(ttl=60, SetIdentifier="dc-b", Weight=0,
                   HealthCheckId="11111111-2222-3333-4444-555555555555")
    h.listing(mine)
    h.change([{"Action": "UPSERT", "ResourceRecordSet": mine}])  # no data changes
    for status in ("PENDING", "INSYNC"):
        h.get_change(status)
    h.listing(mine)
    with h.stub:
        evidence = h.provider.verify(desired=[Record(NAME, "A", 60, ("198.51.100.1",))])
    h.stub.assert_no_pending_responses()
    assert evidence["changeId"] == "/change/C1" and evidence["status"] == "INSYNC"
    assert evidence["polls"] == 2 and "went INSYNC" in evidence["proof"]


def test_verify_that_never_goes_insync_fails_naming_the_change() -> None:
    h = Harness(syncTimeout="5s")
    h.listing(new_set())
    h.change([{"Action": "UPSERT", "ResourceRecordSet": new_set()}])
    for _ in range(20):
        h.get_change("PENDING")
    with pytest.raises(DnsNotServed, match=r"change /change/C1 .* still not INSYNC after 5 s"), \
            h.stub:
        h.provider.verify(desired=[Record(NAME, "A", 60, ("198.51.100.1",))])


def test_verify_of_other_values_submits_nothing() -> None:
    h = Harness()
    h.listing(OLD)
    with pytest.raises(DnsConflict, match=r"is \['192\.0\.2\.1'\], expected "
                                          r"\['198\.51\.100\.1'\]"), h.stub:
        h.provider.verify(desired=[Record(NAME, "A", 60, ("198.51.100.1",))])
    h.stub.assert_no_pending_responses()


def test_delete_sends_the_exact_set_and_waits_for_insync() -> None:
    h = Harness()
    h.listing(OLD)
    h.change([{"Action": "DELETE", "ResourceRecordSet": OLD}])
    h.get_change("INSYNC")
    h.listing()
    with h.stub:
        evidence = h.provider.delete(expected=[Record(NAME, "A", 300, ("192.0.2.1",))])
    h.stub.assert_no_pending_responses()
    assert evidence["deleted"] == [{"name": NAME, "type": "A", "ttl": 300,
                                    "values": ["192.0.2.1"]}]
    assert evidence["status"] == "INSYNC"


def test_aws_refusing_a_delete_whose_values_changed_is_a_conflict() -> None:
    h = Harness()
    h.listing(OLD)
    h.reject("InvalidChangeBatch", "[Tried to delete resource record set [name='www.example"
             ".test.', type='A'] but the values provided do not match the current values]")
    with pytest.raises(DnsConflict, match="nothing changed"), h.stub:
        h.provider.delete(expected=[Record(NAME, "A", 300, ("192.0.2.1",))])


# --- fencing -------------------------------------------------------------------------------


def test_a_cancelled_step_submits_no_change() -> None:
    h = Harness()
    h.listing(OLD)  # the read happens; the write must not
    fence = fencing.Fence(3, "controller-a")
    fence.cancel("lease lost")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled, match="lease lost"):
        swap(h)
    h.stub.assert_no_pending_responses()


def test_a_steps_change_carries_its_fencing_token() -> None:
    h = Harness()
    h.listing(OLD)
    h.change([{"Action": "DELETE", "ResourceRecordSet": OLD},
              {"Action": "CREATE", "ResourceRecordSet": new_set()}], status="INSYNC",
             comment="failover controller DNS cutover (fencing token 42, controller-b)")
    h.listing(new_set())
    with fencing.scope(fencing.Fence(42, "controller-b")):
        evidence = swap(h)
    h.stub.assert_no_pending_responses()
    assert evidence["status"] == "INSYNC"


def test_the_insync_wait_stops_when_the_step_is_cancelled() -> None:
    """The poll's pause is the step's (fencing.pause): a cancel ends the wait at once
    instead of polling until syncTimeout for a step that already failed."""
    client = boto3.client("route53", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    stub = Stubber(client)
    opts = Route53Options.model_validate({"hostedZoneId": ZONE, "pollInterval": "1s",
                                          "syncTimeout": "300s"})
    provider = Route53DnsProvider(opts, client=client)  # the default sleep: fencing.pause
    stub.add_response("list_resource_record_sets", {"ResourceRecordSets": [OLD],
                                                    "IsTruncated": False, "MaxItems": "100"})
    stub.add_response("change_resource_record_sets", {"ChangeInfo": {
        "Id": "/change/C1", "Status": "PENDING", "SubmittedAt": "2026-01-01T00:00:00Z"}})
    fence = fencing.Fence(1, "controller-a")
    threading.Timer(0.2, fence.cancel, args=("step timeout passed",)).start()
    started = time.monotonic()
    with stub, fencing.scope(fence), pytest.raises(fencing.Cancelled):
        provider.apply(expected=[Record(NAME, "A", 300, ("192.0.2.1",))],
                       desired=[Record(NAME, "A", 60, ("198.51.100.1",))])
    assert time.monotonic() - started < 2.0
