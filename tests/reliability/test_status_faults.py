"""Issue 22 item 2: a failed status write never changes a run's course.

`failoverctl operator` talks to the real kube-apiserver through `KubeFaults`, an HTTP
proxy that answers chosen requests with 503 ServiceUnavailable. The status mirror runs
after each journal commit; a write that fails is written again (with the next change or
on the next tick), and the engine goes on as the journal says:

- a 503 on the status write that records a failed `onFailure: abort` step: the run
  still fails there (no later step runs) and the plan says Failed;
- a 503 on the status write of the run's final record: the plan still ends FailedOver on
  dc-b, and a failback then fails back.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from tests.e2e.test_operator import Replica, delete, get, names, plan_body, until
from tests.reliability.conftest import TALLY
from tests.reliability.faults import KubeFaults


@pytest.fixture
def faults(kube: KubeServers) -> Iterator[KubeFaults]:
    proxy = KubeFaults(kube.url, ca_file=str(kube.ca_file))
    yield proxy
    proxy.stop()


@pytest.fixture
def replica(kube: KubeServers, faults: KubeFaults, tmp_path: Path) -> Iterator[
        Callable[[], Replica]]:
    started: list[Replica] = []

    def start() -> Replica:
        config = faults.kubeconfig(tmp_path / "kubeconfig-faults",
                                   str(kube.identities["controller"].token_file))
        started.append(Replica(kube, tmp_path, "replica-a", kubeconfig=config))
        return started[-1]

    yield start
    for r in started:
        r.stop(signal.SIGKILL if r.proc.poll() is None else signal.SIGTERM)


def status_write(kube: KubeServers, name: str, fits: Callable[[dict[str, Any]], bool]
                 ) -> Callable[[str, str, Any], bool]:
    """Matches a write of `name`'s status whose new status `fits`."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{kube.namespace}/{PLURAL}/{name}/status"

    def when(method: str, at: str, body: Any) -> bool:
        return (method in ("PUT", "PATCH") and at.split("?")[0] == path
                and isinstance(body, dict) and fits(body.get("status") or {}))

    return when


def steps(status: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in (status.get("run") or {}).get("steps", [])}


def test_a_503_on_the_status_of_a_failed_abort_step_still_fails_the_run(
        kube: KubeServers, faults: KubeFaults, replica: Callable[[], Replica],
        tmp_path: Path) -> None:
    TALLY["fault_tried"] += 1
    admin, ns, name = kube.kube("admin"), kube.namespace, "aborts"
    state = tmp_path / "world.json"
    body = plan_body(name, state)
    zone = next(b for b in body["spec"]["backends"] if b["name"] == "zone")
    zone["options"]["fail"] = True  # the DNS server cannot be reached
    cutover = next(s for s in body["spec"]["steps"] if s["name"] == "dns-cutover")
    cutover.update(onFailure="abort", retries=0)
    admin.create(GROUP, VERSION, ns, PLURAL, body)
    fault = faults.fail(status_write(kube, name, lambda st: steps(st).get(
        "dns-cutover") == "failed"))
    r = replica()
    until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
        "phase") == "Healthy", logs=r.output)
    testing.set_health("dc-a", False, state_file=str(state))
    ended = until("the run ended", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") in ("Failed", "FailedOver") and o, logs=r.output)
    assert fault.hits == 1, "the fault never fired"
    st = ended["status"]
    assert st["phase"] == "Failed", st
    assert steps(st) == {"notify-incident": "succeeded", "redirect-traffic": "succeeded",
                         "dns-cutover": "failed", "link-test": "pending"}, steps(st)
    assert st["run"]["outcome"].startswith("step dns-cutover failed"), st["run"]["outcome"]
    assert "not written" in r.output()  # said, and written again
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=r.output)
    assert "Traceback" not in r.output()
    TALLY["fault_survived"] += 1


def test_a_503_on_the_runs_final_status_still_ends_failed_over_and_fails_back(
        kube: KubeServers, faults: KubeFaults, replica: Callable[[], Replica],
        tmp_path: Path) -> None:
    TALLY["fault_tried"] += 1
    admin, ns, name = kube.kube("admin"), kube.namespace, "finishes"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state))
    fault = faults.fail(status_write(kube, name, lambda st: bool(
        (st.get("run") or {}).get("finishedAt")) and st["run"]["kind"] == "failover"))
    r = replica()
    until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
        "phase") == "Healthy", logs=r.output)
    testing.set_health("dc-a", False, state_file=str(state))
    done = until("FailedOver", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "FailedOver" and o, timeout=30, logs=r.output)
    assert fault.hits == 1, "the fault never fired"
    assert done["status"]["activeSite"] == "dc-b" and done["status"]["run"]["finishedAt"]

    testing.set_health("dc-a", True, state_file=str(state))
    admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": {
        f"{GROUP}/request": "failback", f"{GROUP}/requested-by": "alice"}}})
    back = until("failed back", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "Healthy" and o["status"]["run"]["kind"] == "failback" and o,
        logs=r.output)
    assert back["status"]["run"]["outcome"].startswith("all steps succeeded"), back["status"]
    assert back["status"]["activeSite"] == "dc-a"
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=r.output)
    assert "Traceback" not in r.output()
    TALLY["fault_survived"] += 1
