"""The plans a simulated schedule runs: small, fast variants of the memory drill.

Each variant keeps the engine's real paths reachable in a few simulated seconds: a trip
after two failed probes and a one-second dwell, a short cooldown, steps of each kind
(notify, traffic instant or stepped, DNS, restore, verify, a human step, approvals), a
short or long timeout, `onFailure: revert` or `abort`, automatic failback or not, and
clearing after one probe that passes or three (a failback before the plan clears). The
`promote` shapes promote the in-memory standby first (`controller.testing_db`): fenced by
SQL or, when the old primary cannot be reached, by the plan's STONITH command
(`promote`), by a person the promote step asks for (`promote-ask`: it waits until they
say done, at most `CONFIRM`, then fails `fence-unconfirmed`), or by a person who says
done in the human step `fence-primary` placed before it (`promote-person`, the older
form); a failback brings the database home first (`db-failback`:
dc-b fenced by a stop, or by SQL). Parsed once per process (`plan_for`), since schedules
share them.
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

from controller.plan import FailoverPlan, parse_plan

TICK = 2.0  # seconds between a replica's cycles (and the probes' interval)
SHAPES = ("basic", "stepped", "manual", "restore", "promote", "promote-person", "promote-ask")
PROMOTING = ("promote", "promote-person", "promote-ask")
ASKING = ("promote-person", "promote-ask")  # a person fences the old primary
CONFIRM = "12s"  # promote-ask: how long the step waits for the person
KEYS: list[tuple[str, bool, bool, bool]] = list(
    itertools.product(SHAPES, (False, True), (False, True), (False, True)))
# (shape, short timeout, onFailure revert, automatic failback)

TRIGGER = {"consecutiveFailures": 1, "availabilityFloor": 70, "window": "4s",
           "dwell": "1s", "clearAfter": 1, "cooldown": "3s"}
PRIMARY_WEIGHTS = {"dc-a": 100, "dc-b": 0}
RECORD = {"name": "www.example.test.", "type": "A", "ttl": 60, "values": ["192.0.2.10"]}
BACKUP_RECORD = {"name": "www.example.test.", "type": "A", "ttl": 60,
                 "values": ["198.51.100.10"]}


def document(shape: str, short: bool, revert: bool, failback: bool,
             clear_after: int = 1) -> dict[str, Any]:
    timeout = "4s" if short else "20s"
    on_failure = "revert" if revert else "abort"
    probe = [{"kind": "memory", "options": {"key": "dc-a", "traffic": "edge"}}]
    backends: list[dict[str, Any]] = [
        {"name": "edge", "role": "traffic", "kind": "memory",
         "options": {"key": "edge", "weights": PRIMARY_WEIGHTS}},
        {"name": "zone", "role": "dns", "kind": "memory",
         "options": {"key": "zone", "records": [RECORD]}},
        {"name": "im", "role": "notifier", "kind": "memory", "options": {"key": "im"}},
    ]
    traffic: dict[str, Any] = {"name": "redirect-traffic", "action": "traffic",
                               "backend": "edge", "timeout": timeout, "retries": 2,
                               "onFailure": on_failure,
                               "params": {"to": "dc-b", "weights": {"dc-b": 100, "dc-a": 0}}}
    dns: dict[str, Any] = {"name": "dns-cutover", "action": "dns", "backend": "zone",
                           "timeout": timeout, "retries": 2, "onFailure": on_failure,
                           "params": {"records": [BACKUP_RECORD]}}
    steps: list[dict[str, Any]] = []
    spec: dict[str, Any] = {}
    if shape == "basic":
        steps = [{"name": "notify-incident", "action": "notify", "backend": "im",
                  "params": {"recipients": ["oncall"]}},
                 traffic, dns,
                 {"name": "link-test", "action": "verify", "timeout": timeout, "retries": 3,
                  "params": {"services": ["web", "api"]}}]
    elif shape == "stepped":
        traffic["params"] = {**traffic["params"], "steps": [10, 50, 100], "pause": "1s"}
        steps = [traffic, dns]
    elif shape == "manual":
        spec = {"mode": "manual", "approval": {"required": 1}}
        dns["approval"] = True
        steps = [traffic, dns,
                 {"name": "tell-the-branches", "action": "manual",
                  "params": {"instructions": "call every branch"}}]
    elif shape == "restore":
        backends += [
            {"name": "store", "role": "store", "kind": "memory",
             "options": {"key": "store", "backups": [
                 {"id": "b1", "dataset": "db", "kind": "daily", "verified": True,
                  "takenAt": 1_699_999_000},
                 # the preferred backup is damaged: the first restore falls back to b1 and
                 # marks b2 not verified; later restores choose b1
                 {"id": "b2", "dataset": "db", "kind": "continuous", "verified": True,
                  "takenAt": 1_699_999_500, "damaged": "corrupt"}]}},
            {"name": "db", "role": "restorer", "kind": "memory", "options": {"key": "db"}},
        ]
        steps = [{"name": "restore-db", "action": "restore", "backend": "db",
                  "timeout": timeout, "retries": 1, "onFailure": "abort",
                  "params": {"store": "store", "dataset": "db",
                             "into": {"path": "/srv/db"}}},
                 traffic, dns]
    elif shape in PROMOTING:
        backends.append({"name": "pg", "role": "database", "kind": "memory",
                         "options": {"key": "pg"}})
        fence: dict[str, Any] = {"method": "sql"}
        steps = []
        if shape == "promote":
            fence["command"] = ["stonith", "dc-a"]
        elif shape == "promote-ask":
            fence["confirmTimeout"] = CONFIRM
        else:
            steps.append({"name": "fence-primary", "action": "manual",
                          "params": {"instructions": "power off dc-a's database host"}})
        steps += [{"name": "promote-db", "action": "promote", "backend": "pg",
                   "timeout": timeout, "retries": 2, "onFailure": "abort",
                   "params": {"standby": {"host": "dc-b"}, "primary": {"host": "dc-a"},
                              "fence": fence, "timeouts": {"catchUp": "1s"},
                              "failback": {"catchUp": "2s", "fence": "ssh-stop"
                                           if shape == "promote" else "sql"},
                              "validation": [{"name": "one", "query": "SELECT 1",
                                              "expect": "1"}]}},
                  traffic, dns]
    return {
        "apiVersion": "failover.example.io/v1alpha1", "kind": "FailoverPlan",
        "metadata": {"name": "sim"},
        "spec": {
            "sites": {"primary": {"name": "dc-a"}, "backup": {"name": "dc-b"}},
            "services": [{"name": "web", "core": True, "interval": "2s", "probes": probe},
                         {"name": "api", "core": True, "interval": "2s", "probes": probe}],
            "trigger": {**TRIGGER, "clearAfter": clear_after},
            "automaticFailback": failback,
            "readinessInterval": "1h",
            "backends": backends,
            "steps": steps,
            **spec,
        },
    }


@cache
def plan_for(key: tuple[str, bool, bool, bool], clear_after: int = 1) -> FailoverPlan:
    return parse_plan(document(*key, clear_after=clear_after))
