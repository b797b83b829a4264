"""When a data set's backup is due, how fresh its proofs are, and the CronJob that runs it.

Owns the time rules of `spec.backups[]`, pure functions of the set, the catalog's
listing and `now` (no I/O, so the CLI, readiness and tests share them):
- `due`: a backup is due when no verified backup exists or the newest is `every` old;
- `due_test_restore`: a test restore of the newest verified backup is due when none
  passed within `testRestoreEvery` (`backup --due` runs it, so readiness's test-restore
  check stays green without anyone remembering it);
- `newest_verified`, `last_test_restore`: what readiness compares with the RPO budget and
  `testRestoreEvery`.
And `cronjob`: the schedule in the cluster is a Kubernetes CronJob per plan (with the
plan in a ConfigMap beside it) running `failoverctl backup PLAN --due` every few minutes,
rather than the operator: a backup runs for minutes to hours with PostgreSQL's and
pgBackRest's tools, a scratch disk and network access to the databases, none of which
the operator's small read-only pod should have, and a CronJob gives each run its own pod,
resources, retries, history and `concurrencyPolicy: Forbid` for free. `--due` makes the
cadence the plan's (`every`), not the cron line's: a missed or failed run is caught up at
the next tick, and a tick with nothing due does nothing.
"""

from __future__ import annotations

from typing import Any

from controller.model import Backup
from controller.plan import BackupSet, FailoverPlan, format_duration


def human_age(seconds: float) -> str:
    """An age for people: whole hours and minutes ("2h", "2h 5m", "59m", "40s")."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours}h {minutes}m" if hours and minutes else f"{hours}h" if hours else f"{minutes}m"


def newest_verified(backups: list[Backup]) -> Backup | None:
    verified = [b for b in backups if b.verified is True]
    return max(verified, key=lambda b: (b.taken_at, b.id), default=None)


def due(spec: BackupSet, backups: list[Backup], now: float) -> str | None:
    """Why a backup of `spec.dataset` is due now (None: it is not)."""
    newest = newest_verified(backups)
    if newest is None:
        return f"{spec.dataset}: no verified backup yet"
    old = now - newest.taken_at
    if old >= spec.every:
        return (f"{spec.dataset}: newest verified backup {newest.id} is {human_age(old)} old "
                f"(every {format_duration(spec.every)})")
    return None


def due_test_restore(spec: BackupSet, backups: list[Backup], now: float
                     ) -> tuple[Backup, str] | None:
    """The backup to test-restore now (the newest verified one) and why; None when a test
    restore passed within `testRestoreEvery`, or no backup is verified to test."""
    newest = newest_verified(backups)
    if newest is None:
        return None
    at = last_test_restore(backups)
    every = format_duration(spec.test_restore_every)
    if at is None:
        return newest, f"{spec.dataset}: no test restore passed yet (every {every})"
    if now - at >= spec.test_restore_every:
        return newest, (f"{spec.dataset}: the last passed test restore is {human_age(now - at)} "
                        f"old (every {every})")
    return None


def last_test_restore(backups: list[Backup]) -> float | None:
    """When a test restore of any of these backups last passed (its verification's
    time), from each backup's latest verification; None: never."""
    times = [float(v["at"]) for b in backups
             if isinstance(v := b.meta.get("lastVerification"), dict)
             and any(c.get("name") == "test-restore" and c.get("passed") is True
                     for c in v.get("checks") or [])]
    return max(times, default=None)


def cronjob(plan: FailoverPlan, plan_text: str, *, image: str, namespace: str,
            schedule: str = "*/15 * * * *") -> list[dict[str, Any]]:
    """A ConfigMap holding the plan and a CronJob running `failoverctl backup --due` on
    it (`kubectl apply -f -`); secrets and pgbackrest.conf are mounted by the operator of
    the cluster as the plan's SecretRefs and paths name them."""
    name = f"{plan.name}-backups"[:52]
    labels = {"app.kubernetes.io/name": "failover-backups",
              "failover.example.io/plan": plan.name}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": name, "namespace": namespace, "labels": labels},
                  "data": {"plan.yaml": plan_text}}
    container = {
        "name": "backup", "image": image,
        "args": ["backup", "/etc/failover/plan.yaml", "--due"],
        "env": [{"name": "FAILOVER_JOURNAL", "value": "/var/lib/failover/journal.db"}],
        "volumeMounts": [{"name": "plan", "mountPath": "/etc/failover", "readOnly": True},
                         {"name": "scratch", "mountPath": "/var/lib/failover"}],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}}}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"schedule": schedule, "concurrencyPolicy": "Forbid",
                     "startingDeadlineSeconds": 600, "successfulJobsHistoryLimit": 3,
                     "failedJobsHistoryLimit": 5,
                     "jobTemplate": {"metadata": {"labels": labels}, "spec": {
                         "backoffLimit": 1, "template": {"metadata": {"labels": labels},
                                                         "spec": {
                             "restartPolicy": "Never", "containers": [container],
                             "volumes": [{"name": "plan", "configMap": {"name": name}},
                                         {"name": "scratch", "emptyDir": {}}]}}}}}}
    return [config_map, cron]
