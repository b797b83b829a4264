"""Kubernetes API launcher: Debian's etcd + a locally built kube-apiserver, RBAC enforced.

Owns a small, real Kubernetes control plane (no nodes, no controllers) for the
`controller/kube.py` and mesh traffic contract tests, the benchmark and drills:

- `etcd` (Debian package etcd-server, started by `etcd.py`) with its data in a fresh temp
  directory, client and peer ports picked free at run time;
- `kube-apiserver` built by `scripts/build-kube-apiserver.sh` and cached outside the
  repository (no package ships it), serving TLS on a free loopback port with a serving
  certificate signed by a throw-away CA (made with `cryptography`), a service-account
  signing key, a static token file with two identities, and `--authorization-mode=RBAC`:
  - `admin`: group system:masters (sets the world up, plays "someone else" in tests);
  - `controller`: the ServiceAccount user of `manifests/deploy/rbac.yaml`
    (system:serviceaccount:failover-system:failover-controller), bound by exactly the
    project's Role, so tests run the controller with the permissions it ships with;
  - one more per entry of `people` (user name: groups), with no permission until a test
    binds a role to them (the people's roles of `manifests/deploy/people.yaml`).
- On start it creates the namespace and RBAC of `manifests/deploy/`, installs the CRDs
  (the project's `manifests/crd/failoverplans.yaml` plus any `crds` given, e.g. the mesh
  CRDs under `tests/crds/`), and waits until the API answers /readyz, every CRD is Established and
  the controller's Role is in effect.

Setup talks plain HTTPS (urllib) so the launcher does not depend on the client under
test; `kube(identity)` hands out clients built by controller.kube.
Both processes run in the foreground and are stopped by their own PIDs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from controller.drill.processes import terminate
from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready
from controller.drill.servers.certs import write_ca_and_cert
from controller.drill.servers.etcd import EtcdServer, etcd_binary

ROOT = Path(__file__).resolve().parents[3]
KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.36.3")
BUILD_HINT = "build it with scripts/build-kube-apiserver.sh (needs Go; cached outside the repo)"
PROJECT_CRDS = (ROOT / "manifests/crd/failoverplans.yaml",)
DEPLOY = ROOT / "manifests/deploy"


def kube_apiserver_path() -> Path:
    """Where the build script caches the binary ($FAILOVER_KUBE_APISERVER overrides)."""
    override = os.environ.get("FAILOVER_KUBE_APISERVER")
    if override:
        return Path(override)
    return _cache() / f"kube-apiserver-{KUBE_VERSION}"


def _cache() -> Path:
    return Path(os.environ.get("KUBE_CACHE", Path.home() / ".cache/failover-controller"))


def kubectl_path() -> str:
    """kubectl on PATH, else the one scripts/build-kube-apiserver.sh built into the cache."""
    found = shutil.which("kubectl")
    if found:
        return found
    built = _cache() / f"kubectl-{KUBE_VERSION}"
    if not built.is_file():
        raise ServerError(f"kubectl not found on PATH nor at {built}: {BUILD_HINT}")
    return str(built)


def _docs(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    out: list[dict[str, Any]] = []
    for f in files:
        out.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return out


def _service_account(rbac: list[dict[str, Any]]) -> tuple[str, str]:
    for doc in rbac:
        if doc.get("kind") == "ServiceAccount":
            return doc["metadata"]["namespace"], doc["metadata"]["name"]
    raise ServerError("manifests/deploy/rbac.yaml names no ServiceAccount")


def _write_sa_key(directory: Path) -> tuple[Path, Path]:
    """The service-account token signing key (private) and its public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "sa.key", directory / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@dataclass(frozen=True)
class Identity:
    name: str  # admin | controller | one of KubeServers.people
    user: str
    groups: tuple[str, ...]
    token_file: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


@dataclass
class KubeServers(Launcher):
    """etcd + kube-apiserver with the project's RBAC and CRDs installed.

    `with KubeServers(crds=[ROOT / "tests/crds"]) as kube: kube.kube("controller")...`
    """

    crds: list[Path] = field(default_factory=list)
    people: dict[str, tuple[str, ...]] = field(default_factory=dict)  # user: groups
    base: Path | None = None
    binary: Path | None = None
    url: str = ""
    ca_file: Path | None = None
    etcd_url: str = ""
    identities: dict[str, Identity] = field(default_factory=dict)
    startup_seconds: float = 0.0
    namespace: str = ""  # the controller's namespace (from manifests/deploy/rbac.yaml)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _own_base: bool = False

    # --- what callers use ----------------------------------------------------------------

    def token(self, identity: str = "admin") -> str:
        return self.identities[identity].token

    def connection(self, identity: str = "controller") -> dict[str, Any]:
        """Options for `controller.kube.KubeConnection` (token read from its file)."""
        ident = self.identities[identity]
        return {"host": self.url, "token": {"fromFile": str(ident.token_file)},
                "caFile": str(self.ca_file)}

    def kube(self, identity: str = "controller", **kwargs: Any) -> Any:
        """A `controller.kube.Kube` for `identity` (admin or controller)."""
        from controller.kube import Kube

        return Kube.from_token(self.url, self.token(identity), ca_file=str(self.ca_file),
                               **kwargs)

    def kubeconfig(self, identity: str = "controller") -> Path:
        """A kubeconfig file for `identity` (mode 0600, in the server's directory)."""
        assert self.base is not None
        path = self.base / f"kubeconfig-{identity}"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": identity,
            "clusters": [{"name": "local", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": identity, "user": {"tokenFile": str(
                self.identities[identity].token_file)}}],
            "contexts": [{"name": identity, "context": {"cluster": "local",
                                                       "user": identity}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def request(self, method: str, path: str, body: Any = None, *,
                identity: str = "admin", timeout: float = 10.0) -> tuple[int, Any]:
        """One raw HTTPS call as `identity`: (status, parsed JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token(identity)}",
            "Content-Type": "application/json", "Accept": "application/json"})
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def apply(self, docs: list[dict[str, Any]]) -> None:
        """Create each object as admin (namespaces, RBAC, CRDs ...); existing ones are
        replaced."""
        for doc in docs:
            path = _collection(doc)
            status, reply = self.request("POST", path, doc)
            if status == 409:
                name = doc["metadata"]["name"]
                _, current = self.request("GET", f"{path}/{name}")
                doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion":
                                           current["metadata"]["resourceVersion"]}}
                status, reply = self.request("PUT", f"{path}/{name}", doc)
            if status >= 300:
                raise ServerError(f"creating {doc['kind']} {doc['metadata'].get('name')} "
                                  f"failed ({status}): {_message(reply)}")

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> KubeServers:
        began = time.monotonic()
        apiserver = self.binary or kube_apiserver_path()
        if not apiserver.is_file():
            raise ServerError(f"kube-apiserver {KUBE_VERSION} not found at {apiserver}: "
                              f"{BUILD_HINT}")
        etcd_binary()  # fail before any work when etcd is missing
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="kube-"))
            self._own_base = True
        base = self.base
        base.mkdir(parents=True, exist_ok=True)
        rbac = _docs(DEPLOY / "rbac.yaml")
        self.namespace, sa = _service_account(rbac)
        try:
            self.ca_file, cert, key = write_ca_and_cert(
                base, name="kube-apiserver", dns_names=("kubernetes.default.svc",))
            sa_key, sa_pub = _write_sa_key(base)
            tokens = base / "tokens"
            tokens.mkdir(mode=0o700)
            self.identities = {
                "admin": Identity("admin", "failover-test-admin", ("system:masters",),
                                  tokens / "admin"),
                "controller": Identity(
                    "controller", f"system:serviceaccount:{self.namespace}:{sa}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{self.namespace}"),
                    tokens / "controller"),
                **{user: Identity(user, user, groups, tokens / user)
                   for user, groups in self.people.items()},
            }
            lines = []
            for ident in self.identities.values():
                ident.token_file.write_text(secrets.token_urlsafe(32))
                ident.token_file.chmod(0o600)
                lines.append(f'{ident.token},{ident.user},{ident.name}-uid,'
                             f'"{",".join(ident.groups)}"')
            (base / "tokens.csv").write_text("\n".join(lines) + "\n")
            (base / "tokens.csv").chmod(0o600)

            etcd = EtcdServer(base=base).start(timeout=timeout)  # base/etcd, base/etcd.log
            if etcd.process is not None:  # stopped by PID below, with kube-apiserver
                self._procs["etcd"] = etcd.process
            self.etcd_url = etcd.url

            port = free_port()
            self.url = f"https://127.0.0.1:{port}"
            self._spawn("kube-apiserver", [
                str(apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={port}", f"--cert-dir={base / 'certs'}",
                f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
                f"--token-auth-file={base / 'tokens.csv'}", "--anonymous-auth=false",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                "--profiling=false", "--v=0"])
            self._wait("kube-apiserver", self._api_ready, timeout)

            self.apply(_docs(DEPLOY / "namespace.yaml") + rbac)
            crds = [d for p in [*PROJECT_CRDS, *self.crds] for d in _docs(p)
                    if d.get("kind") == "CustomResourceDefinition"]
            self.apply(crds)
            for crd in crds:
                name = crd["metadata"]["name"]
                self._wait(f"CRD {name} Established", partial(self._established, name),
                           timeout)
            self._wait("the controller's RBAC Role", lambda: self._role_effective(rbac),
                       timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            terminate(proc, timeout=15)
        if self._own_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return proc.pid if proc else None

    # --- internals ---------------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        assert self.base is not None
        return self.base / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.base is not None
        with self._log(name).open("wb") as log:
            self._procs[name] = subprocess.Popen(argv, cwd=self.base, stdout=log,
                                                 stderr=subprocess.STDOUT)

    def wait_role_effective(self, rbac: list[dict[str, Any]], timeout: float = 10.0) -> None:
        """Wait until the controller is allowed what each Role in `rbac` grants (one it was
        just bound to is refused for a moment: see `_role_effective`)."""
        self._wait("the Role for the controller", lambda: self._role_effective(rbac), timeout)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        wait_ready(what, ready, timeout=timeout,
                   watch=[(name, proc, self._log(name)) for name, proc in self._procs.items()],
                   not_yet=(OSError, ValueError, KeyError))

    def _api_ready(self) -> bool:
        status, body = self.request("GET", "/readyz", timeout=2)
        return status == 200 and str(body).strip() == "ok"

    def _established(self, name: str) -> bool:
        status, crd = self.request(
            "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = (crd.get("status") or {}).get("conditions") or [] if status == 200 else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    def _role_effective(self, rbac: list[dict[str, Any]]) -> bool:
        """Every rule of the Role answers `allowed` to the controller (the RBAC
        authorizer learns of new Roles through an informer, a moment after creation)."""
        for role in (d for d in rbac if d["kind"] == "Role"):
            for rule in role["rules"]:
                resource, _, subresource = rule["resources"][0].partition("/")
                names = rule.get("resourceNames") or [""]  # a rule for named objects
                review = {"apiVersion": "authorization.k8s.io/v1",
                          "kind": "SelfSubjectAccessReview",
                          "spec": {"resourceAttributes": {
                              "namespace": role["metadata"]["namespace"],
                              "verb": rule["verbs"][0], "group": rule["apiGroups"][0],
                              "resource": resource, "subresource": subresource,
                              "name": names[0]}}}
                status, reply = self.request(
                    "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review,
                    identity="controller")
                if status != 201 or not reply["status"].get("allowed"):
                    return False
        return True


_CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                   "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                   "ValidatingAdmissionPolicyBinding"}


def _collection(doc: dict[str, Any]) -> str:
    api = doc["apiVersion"]
    prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
    kind = doc["kind"].lower()
    plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    if doc["kind"] in _CLUSTER_SCOPED:
        return f"{prefix}/{plural}"
    namespace = doc["metadata"].get("namespace", "default")
    return f"{prefix}/namespaces/{namespace}/{plural}"


def _message(reply: Any) -> str:
    return str(reply.get("message")) if isinstance(reply, dict) else str(reply)[:500]
