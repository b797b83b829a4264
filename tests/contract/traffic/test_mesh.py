"""The mesh traffic backends (Istio, Gateway API, SMI) against a real kube-apiserver:
what the shared contract (test_traffic_contract.py, which runs them too) cannot say.

Every test runs once per kind, as the `controller` identity (exactly the Role of
manifests/deploy/rbac.yaml), on an object that `admin` created in the controller's
namespace with the CRDs of tests/crds (see `meshes`). They show: shift then revert gives
back the original spec byte for byte, parts the backend does not manage included; an
edit made by someone else between our read and our write is retried, not lost; objects,
routes and destinations that do not match the plan are clear permanent errors that
change nothing; RBAC and kubeconfig. Fencing: a write inside a step stamps its token on
the object, one with an older token than the object carries is refused (also when the
newer write lands between our read and our write).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from controller import fencing, registry
from controller.drill.servers.kube import KubeServers
from controller.kube import Kube
from controller.model import PermanentError
from controller.secrets import Secrets
from controller.traffic.mesh import TOKEN_ANNOTATION
from tests.contract.traffic.meshes import ISTIO, KINDS, Mesh, make_mesh

ORIGINAL = {"dc-a": 100, "dc-b": 0}
CUTOVER = {"dc-b": 100, "dc-a": 0}


class RacingKube(Kube):
    """A real client that lets `race` run right before its `nth` write (counting from 1):
    someone else's write lands between our read and our write, as in production."""

    race: Callable[[], None] | None = None
    nth = 0
    writes = 0

    def replace(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.writes += 1
        if self.race is not None and self.writes == self.nth:
            self.race()
        return super().replace(*args, **kwargs)


@pytest.fixture(params=sorted(KINDS))
def mesh(request: pytest.FixtureRequest, kube: KubeServers) -> Mesh:
    return make_mesh(KINDS[request.param], kube)


def test_shift_then_revert_restores_the_spec_byte_for_byte(mesh: Mesh) -> None:
    original = mesh.spec_json()
    backend = mesh.backend()
    before = backend.current()
    rv0 = mesh.get()["metadata"]["resourceVersion"]

    evidence = backend.shift(to="dc-b", weights=CUTOVER)

    assert backend.current() == CUTOVER
    assert evidence["before"] == ORIGINAL and evidence["after"] == CUTOVER
    assert evidence["to"] == "dc-b" and evidence["writes"] == 2
    assert evidence["object"] == f"{mesh.kind.kind} {mesh.ns}/{mesh.name}"
    assert evidence["resourceVersion"]["before"] == rv0
    assert evidence["resourceVersion"]["after"] == mesh.get()["metadata"]["resourceVersion"]
    shifted = json.loads(mesh.spec_json())
    assert mesh.kind.weights(shifted) != mesh.kind.weights(json.loads(original))

    back = backend.revert(to=before)

    assert back["before"] == CUTOVER and back["after"] == ORIGINAL
    assert mesh.spec_json() == original  # exactly the object we started from


def test_a_split_is_reverted_exactly(mesh: Mesh) -> None:
    backend = mesh.backend()
    original = mesh.spec_json()
    backend.shift(to="dc-b", weights={"dc-b": 30, "dc-a": 70})
    assert backend.current() == {"dc-a": 70, "dc-b": 30}
    backend.shift(to="dc-b", weights=CUTOVER)
    backend.revert(to=ORIGINAL)
    assert mesh.spec_json() == original


@pytest.mark.parametrize("nth", [1, 2], ids=["before-enable", "before-drain"])
def test_a_concurrent_edit_is_retried_and_not_lost(mesh: Mesh, nth: int) -> None:
    racing = RacingKube.from_token(mesh.kube.url, mesh.kube.token("controller"),
                                   ca_file=str(mesh.kube.ca_file))
    assert isinstance(racing, RacingKube)
    racing.race, racing.nth = mesh.foreign_edit, nth  # write 1 enables dc-b, 2 drains dc-a
    backend = registry.load("traffic", mesh.kind.name)(
        registry.parse_options("traffic", mesh.kind.name, mesh.options()), kube=racing)

    original = json.loads(mesh.spec_json())
    evidence = backend.shift(to="dc-b", weights=CUTOVER)

    assert racing.conflicts == 1  # our stale write was refused, re-read and re-applied
    assert evidence["after"] == CUTOVER and evidence["writes"] == 2
    assert mesh.kind.weights(mesh.get()["spec"])[:2] == [0, 100]  # ours is there ...
    backend.revert(to=ORIGINAL)
    mesh.kind.foreign_edit(original)  # ... and so is theirs: nothing else differs
    assert json.dumps(mesh.get()["spec"], sort_keys=True) == json.dumps(original,
                                                                         sort_keys=True)


def test_a_route_or_destination_not_in_the_object_is_a_clear_error(mesh: Mesh) -> None:
    before = mesh.spec_json()
    backend = mesh.backend(**mesh.kind.missing)
    with pytest.raises(PermanentError) as err:
        backend.shift(to="dc-b", weights=CUTOVER)
    message = str(err.value)
    assert message.startswith(f"{mesh.kind.kind} {mesh.ns}/{mesh.name}: ")
    assert mesh.kind.missing_error in message
    with pytest.raises(PermanentError, match="no"):
        backend.current()
    assert mesh.spec_json() == before  # nothing changed


def test_a_missing_object_names_what_exists(mesh: Mesh) -> None:
    backend = mesh.backend(name="no-such-object")
    with pytest.raises(PermanentError) as err:
        backend.current()
    message = str(err.value)
    assert f"{mesh.kind.kind} {mesh.ns}/no-such-object does not exist" in message
    assert f"namespace {mesh.ns} has {mesh.kind.kind} " in message and mesh.name in message


def test_unknown_sites_and_a_total_of_zero_are_refused_before_any_write(mesh: Mesh) -> None:
    backend = mesh.backend()
    rv = mesh.get()["metadata"]["resourceVersion"]
    with pytest.raises(PermanentError, match=r"no destination for target site 'dc-z'"):
        backend.shift(to="dc-z", weights={"dc-z": 100})
    with pytest.raises(PermanentError, match=r"site\(s\) \['dc-q'\]"):
        backend.shift(to="dc-b", weights={"dc-b": 100, "dc-q": 0})
    with pytest.raises(PermanentError, match="would send no traffic"):
        backend.revert(to={"dc-a": 0, "dc-b": 0})
    assert mesh.get()["metadata"]["resourceVersion"] == rv


def test_outside_its_rbac_namespace_the_controller_is_forbidden(mesh: Mesh) -> None:
    status, _ = mesh.kube.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"other-{mesh.name}"}})
    assert status == 201
    backend = mesh.backend(namespace=f"other-{mesh.name}")
    with pytest.raises(PermanentError, match=f'grant verb "get" on resource '
                       f'"{mesh.kind.plural}" in apiGroup "{mesh.kind.group}"'):
        backend.current()


def test_a_kubeconfig_works_as_well(mesh: Mesh) -> None:
    options = {"kubeconfig": str(mesh.kube.kubeconfig("controller")), "namespace": mesh.ns,
               "name": mesh.name, **mesh.kind.options}
    backend = registry.build("traffic", mesh.kind.name, options, secrets=Secrets())
    assert backend.current() == ORIGINAL


def test_istio_routes_that_disagree_are_refused_not_guessed() -> None:
    from controller.traffic.istio import IstioOptions, IstioTrafficBackend

    options = IstioOptions.model_validate({
        "host": "https://unused.invalid", "namespace": "ns", "name": "vs",
        "destinations": ISTIO.options["destinations"]})
    backend = IstioTrafficBackend(options, kube=Kube.from_token("https://unused.invalid",
                                                                 "unused"))
    spec = copy.deepcopy(ISTIO.spec)
    second = copy.deepcopy(spec["http"][0])
    second["name"], second["route"][0]["weight"], second["route"][1]["weight"] = "b", 50, 50
    spec["http"].append(second)
    with pytest.raises(PermanentError, match="carry different weights"):
        backend._weights_of({"spec": spec})


# --- fencing: each write carries its token, an older token is refused ---------------------


def token_of(mesh: Mesh) -> str | None:
    return (mesh.get()["metadata"].get("annotations") or {}).get(TOKEN_ANNOTATION)


def test_each_write_in_a_step_carries_its_fencing_token(mesh: Mesh) -> None:
    backend = mesh.backend()
    with fencing.scope(fencing.Fence(5, "replica-1")):
        evidence = backend.shift(to="dc-b", weights=CUTOVER)
    assert token_of(mesh) == "5" and evidence["fencingToken"] == 5
    backend.revert(to=ORIGINAL)  # outside any step: no token to stamp or compare
    assert token_of(mesh) == "5" and backend.current() == ORIGINAL


def test_a_write_with_an_older_token_is_refused_and_changes_nothing(mesh: Mesh) -> None:
    backend = mesh.backend()
    with fencing.scope(fencing.Fence(5, "new-leader")):
        backend.shift(to="dc-b", weights=CUTOVER)
    rv, spec = mesh.get()["metadata"]["resourceVersion"], mesh.spec_json()
    with fencing.scope(fencing.Fence(4, "deposed")), pytest.raises(
            fencing.StaleToken, match=rf"{mesh.kind.kind} {mesh.ns}/{mesh.name} was written "
                                      r"with fencing token 5, newer than this step's 4 "
                                      r"\(holder deposed\)"):
        backend.revert(to=ORIGINAL)
    assert mesh.get()["metadata"]["resourceVersion"] == rv and mesh.spec_json() == spec
    with fencing.scope(fencing.Fence(6, "newer-leader")):
        backend.revert(to=ORIGINAL)
    assert token_of(mesh) == "6" and backend.current() == ORIGINAL


def test_a_newer_holders_write_between_our_read_and_write_is_not_overwritten(
        mesh: Mesh) -> None:
    """The token rides in the resourceVersion-checked update: our stale PUT is refused
    (409), the re-read finds the newer token and we stop."""
    def newer_holder() -> None:
        def edit(obj: dict[str, Any]) -> None:
            obj["metadata"].setdefault("annotations", {})[TOKEN_ANNOTATION] = "9"
            mesh.kind.foreign_edit(obj["spec"])
        mesh.admin.update(mesh.kind.group, mesh.kind.version, mesh.ns, mesh.kind.plural,
                          mesh.name, edit)

    racing = RacingKube.from_token(mesh.kube.url, mesh.kube.token("controller"),
                                   ca_file=str(mesh.kube.ca_file))
    assert isinstance(racing, RacingKube)
    racing.race, racing.nth = newer_holder, 1
    backend = registry.load("traffic", mesh.kind.name)(
        registry.parse_options("traffic", mesh.kind.name, mesh.options()), kube=racing)
    with fencing.scope(fencing.Fence(5, "deposed")), pytest.raises(fencing.StaleToken):
        backend.shift(to="dc-b", weights=CUTOVER)
    assert racing.conflicts == 1
    assert token_of(mesh) == "9" and mesh.backend().current() == ORIGINAL
