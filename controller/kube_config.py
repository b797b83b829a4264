"""How to reach a Kubernetes API server: a kubeconfig file, the in-cluster ServiceAccount,
or an explicit URL + token + CA, resolved into one `ClientConfig`.

Owns the reading of those sources, so `controller.kube_http` only sends requests and
`controller.kube` only speaks the API. Written here rather than borrowed from the
`kubernetes` client, whose import alone held ~38 MiB of every operator replica (issue
20); the rules are kubectl's:

- **kubeconfig**: `$KUBECONFIG` (a list of files, joined by `:`: the first file that
  names a context, cluster, user or `current-context` wins) or `~/.kube/config`; the
  context named, else `current-context`. Relative file paths are relative to the file
  that holds them. Cluster: `server`, `certificate-authority(-data)`,
  `insecure-skip-tls-verify`, `tls-server-name`. User: `token`, `tokenFile`,
  `client-certificate(-data)` + `client-key(-data)`, `username` + `password`, or an
  `exec` credential plugin (client.authentication.k8s.io ExecCredential: its token is
  asked for again once its `expirationTimestamp` passes). `auth-provider` (the removed
  gcp/azure/oidc plug-ins) is refused with the fix.
- **in-cluster**: `KUBERNETES_SERVICE_HOST`/`_PORT` and the ServiceAccount's `token`
  and `ca.crt`; the token file is read again every minute, since the kubelet rotates
  bound tokens.
- A token file (kubeconfig `tokenFile` too) is re-read at most once a minute.

Credentials live only in the `ClientConfig`'s TLS context and its `Credentials`; their
`repr` never shows them, and no error message quotes them (messages name the file and
field, never a value).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.model import PermanentError
from controller.secrets import redact

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")
TOKEN_FILE_MAX_AGE = 60.0  # seconds a token read from a file is used before reading again
EXEC_TIMEOUT = 60.0  # seconds an exec credential plugin may take


class KubeConfigError(PermanentError):
    """The connection settings are missing, unreadable or not usable; says which and why."""


# --- credentials -----------------------------------------------------------------------------


class Credentials:
    """The Authorization header of each request (None: no header, e.g. client certificate
    only). A fixed token, one re-read from a file, or one from an exec plugin."""

    def authorization(self) -> str | None:
        return None

    def __repr__(self) -> str:  # never the credential
        return f"{type(self).__name__}()"


class StaticToken(Credentials):
    def __init__(self, header: str):
        self._header = header

    def authorization(self) -> str | None:
        return self._header


def bearer(token: str) -> StaticToken:
    return StaticToken(f"Bearer {token.strip()}")


def basic(username: str, password: str) -> StaticToken:
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    return StaticToken(f"Basic {pair}")


class TokenFile(Credentials):
    """A bearer token read from a file, read again once it is `max_age` seconds old."""

    def __init__(self, path: Path, *, max_age: float = TOKEN_FILE_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic):
        self.path, self.max_age, self._clock = path, max_age, clock
        self._lock = threading.Lock()
        self._header, self._read_at = self._read(), clock()

    def _read(self) -> str:
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise KubeConfigError(f"cannot read the token file {self.path}: "
                                  f"{exc.strerror or exc}") from None
        if not token:
            raise KubeConfigError(f"the token file {self.path} is empty")
        return f"Bearer {token}"

    def authorization(self) -> str | None:
        with self._lock:
            if self._clock() - self._read_at >= self.max_age:
                self._header, self._read_at = self._read(), self._clock()
            return self._header

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"


@dataclass(frozen=True)
class ExecResult:
    token: str | None
    cert: bytes | None
    key: bytes | None
    expires: dt.datetime | None


class ExecPlugin(Credentials):
    """A kubeconfig `exec` credential plugin: its command prints an ExecCredential whose
    `status` holds a token (or a client certificate + key) and maybe when it expires."""

    def __init__(self, spec: dict[str, Any], *, where: str, base: Path,
                 cluster: dict[str, Any]):
        command = spec.get("command")
        if not command:
            raise KubeConfigError(f"{where}: exec has no command")
        self.where, self.base, self.cluster = where, base, cluster
        self.api_version = str(spec.get("apiVersion") or
                               "client.authentication.k8s.io/v1beta1")
        self.argv = [str(command), *(str(a) for a in spec.get("args") or [])]
        self.env = {str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or []}
        self.hint = str(spec.get("installHint") or "").strip()
        self.provide_cluster = bool(spec.get("provideClusterInfo"))
        self._lock = threading.Lock()
        self.result = self._run()

    def _run(self) -> ExecResult:
        info: dict[str, Any] = {"apiVersion": self.api_version, "kind": "ExecCredential",
                                "spec": {"interactive": False}}
        if self.provide_cluster:
            info["spec"]["cluster"] = {k: v for k, v in self.cluster.items()
                                       if k in ("server", "certificate-authority-data",
                                                "insecure-skip-tls-verify", "tls-server-name")}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        what = f"{self.where}: the exec credential plugin {self.argv[0]}"
        hint = f" ({self.hint})" if self.hint else ""
        try:
            done = subprocess.run(self.argv, env=env, cwd=self.base, capture_output=True,
                                  timeout=EXEC_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            raise KubeConfigError(f"{what} is not installed{hint}") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KubeConfigError(f"{what} could not run: {type(exc).__name__}") from None
        if done.returncode != 0:
            err = redact(done.stderr.decode("utf-8", "replace").strip())[-500:]
            raise KubeConfigError(f"{what} failed (exit {done.returncode}){hint}"
                                  + (f": {err}" if err else ""))
        try:
            status = json.loads(done.stdout)["status"]
        except (ValueError, KeyError, TypeError):
            raise KubeConfigError(f"{what} printed no ExecCredential with a status") from None
        token = status.get("token")
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if not token and not (cert and key):
            raise KubeConfigError(f"{what} gave neither a token nor clientCertificateData "
                                  "+ clientKeyData")
        stamp = status.get("expirationTimestamp")
        expires = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
        return ExecResult(token or None, cert.encode() if cert else None,
                          key.encode() if key else None, expires)

    def authorization(self) -> str | None:
        with self._lock:
            expires = self.result.expires
            if self.result.token and expires is not None and \
                    dt.datetime.now(dt.UTC) >= expires - dt.timedelta(seconds=10):
                self.result = self._run()
            return f"Bearer {self.result.token}" if self.result.token else None

    def __repr__(self) -> str:
        return f"ExecPlugin({self.argv[0]!r})"


# --- the resolved configuration -------------------------------------------------------------


@dataclass
class ClientConfig:
    """Everything a request needs: the server, its TLS context and the credentials."""

    host: str
    tls: ssl.SSLContext | None = field(default=None, repr=False)  # None for http://
    credentials: Credentials = field(default_factory=Credentials)
    server_name: str | None = None  # TLS server name when it differs from the host


def tls_context(*, ca_file: str | None = None, ca_data: bytes | None = None,
                insecure: bool = False, cert: tuple[bytes, bytes] | None = None,
                where: str = "") -> ssl.SSLContext:
    """A client TLS context: verified against the CA given (else the system's), or not
    verified at all when `insecure`; with a client certificate + key (files or PEM)."""
    try:
        context = ssl.create_default_context(
            cafile=ca_file, cadata=ca_data.decode("ascii") if ca_data else None)
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cert is not None:
            _load_pem_chain(context, *cert)
    except (ssl.SSLError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise KubeConfigError(f"{where}: the CA or client certificate cannot be used: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


def _load_pem_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """`ssl` loads a certificate and key only from files: written to a private
    directory, loaded, and removed at once."""
    with tempfile.TemporaryDirectory(prefix="kube-cert-") as tmp:
        paths = []
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            path = Path(tmp) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            paths.append(str(path))
        context.load_cert_chain(paths[0], paths[1])


def from_host(host: str, credentials: Credentials, *, ca_file: str | None = None,
              insecure: bool = False) -> ClientConfig:
    host = host.rstrip("/")
    tls = tls_context(ca_file=ca_file, insecure=insecure, where=f"host {host}") \
        if host.startswith("https://") else None
    return ClientConfig(host, tls, credentials)


# --- in-cluster ---------------------------------------------------------------------------------


def in_cluster(sa_dir: Path | None = None) -> ClientConfig:
    """The pod's own: KUBERNETES_SERVICE_HOST/PORT, the ServiceAccount token and CA."""
    sa_dir = sa_dir or SERVICE_ACCOUNT
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                              "are not set (not running in a pod?); give a kubeconfig instead")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for path in (token, ca):
        if not path.is_file():
            raise KubeConfigError(f"in-cluster: {path} does not exist; is a ServiceAccount "
                                  "token mounted (automountServiceAccountToken)?")
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return from_host(f"https://{host}:{port}", TokenFile(token), ca_file=str(ca))


# --- kubeconfig ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    value: dict[str, Any]
    base: Path  # the directory of the file it came from


@dataclass
class KubeConfigFile:
    """One or more kubeconfig files merged (the first one to name an entry wins)."""

    paths: list[Path]
    current: str | None = None
    contexts: dict[str, _Entry] = field(default_factory=dict)
    clusters: dict[str, _Entry] = field(default_factory=dict)
    users: dict[str, _Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | None = None) -> KubeConfigFile:
        if path is not None:
            paths = [Path(path).expanduser()]
        else:
            env = os.environ.get("KUBECONFIG", "")
            paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p] or \
                [DEFAULT_KUBECONFIG.expanduser()]
        merged = cls(paths)
        read = 0
        for file in paths:
            if not file.is_file() and path is None and len(paths) > 1:
                continue  # kubectl skips missing files of a $KUBECONFIG list
            merged._merge(file, _read_yaml(file))
            read += 1
        if not read:
            raise KubeConfigError(f"kubeconfig: none of {os.pathsep.join(map(str, paths))} "
                                  "exists")
        return merged

    def _merge(self, file: Path, doc: dict[str, Any]) -> None:
        base = file.resolve().parent
        if self.current is None and doc.get("current-context"):
            self.current = str(doc["current-context"])
        for key, table, inner in (("contexts", self.contexts, "context"),
                                  ("clusters", self.clusters, "cluster"),
                                  ("users", self.users, "user")):
            for item in doc.get(key) or []:
                if isinstance(item, dict) and item.get("name") is not None:
                    table.setdefault(str(item["name"]), _Entry(item.get(inner) or {}, base))

    @property
    def where(self) -> str:
        return f"kubeconfig {os.pathsep.join(map(str, self.paths))}"

    def context(self, name: str | None = None) -> tuple[str, dict[str, Any]]:
        chosen = name or self.current
        if not chosen:
            raise KubeConfigError(f"{self.where}: no current-context set and no context "
                                  f"given; choose one of: {', '.join(self.contexts) or 'none'}")
        if chosen not in self.contexts:
            raise KubeConfigError(f"{self.where}: no context named {chosen!r}; it has: "
                                  f"{', '.join(self.contexts) or 'none'}")
        return chosen, self.contexts[chosen].value

    def client(self, context: str | None = None) -> ClientConfig:
        name, ctx = self.context(context)
        where = f"{self.where}, context {name}"
        cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
        if cluster_name not in self.clusters:
            raise KubeConfigError(f"{where}: no cluster named {cluster_name!r}")
        cluster = self.clusters[cluster_name]
        user = self.users.get(str(user_name)) if user_name else None
        if user_name and user is None:
            raise KubeConfigError(f"{where}: no user named {user_name!r}")
        server = str(cluster.value.get("server") or "").rstrip("/")
        if not server:
            raise KubeConfigError(f"{where}: cluster {cluster_name} has no server")
        credentials, cert = _user(user, where, cluster.value)
        tls = None
        if server.startswith("https://"):
            c = cluster.value
            tls = tls_context(
                ca_file=_path(c.get("certificate-authority"), cluster.base),
                ca_data=_data(c.get("certificate-authority-data"),
                              f"{where}: certificate-authority-data"),
                insecure=bool(c.get("insecure-skip-tls-verify")),
                cert=cert, where=where)
        return ClientConfig(server, tls, credentials,
                            server_name=cluster.value.get("tls-server-name") or None)


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise KubeConfigError(f"kubeconfig {file}: cannot read it: {exc.strerror or exc}") \
            from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise KubeConfigError(f"kubeconfig {file}: not valid YAML{at}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {file}: not a kubeconfig (a mapping is expected)")
    return doc


def _path(value: Any, base: Path) -> str | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def _data(value: Any, what: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise KubeConfigError(f"{what} is not valid base64") from None


def _user(user: _Entry | None, where: str,
          cluster: dict[str, Any]) -> tuple[Credentials, tuple[bytes, bytes] | None]:
    """The user's credentials and client certificate + key (PEM)."""
    if user is None:
        return Credentials(), None
    u, base = user.value, user.base
    if u.get("auth-provider"):
        name = (u["auth-provider"] or {}).get("name", "?")
        raise KubeConfigError(f"{where}: auth-provider {name} is not supported (Kubernetes "
                              "removed these plug-ins); use an exec credential plugin "
                              "(e.g. kubelogin, gke-gcloud-auth-plugin) or a token")
    cert: tuple[bytes, bytes] | None = None
    cert_data = _data(u.get("client-certificate-data"), f"{where}: client-certificate-data")
    key_data = _data(u.get("client-key-data"), f"{where}: client-key-data")
    cert_file, key_file = _path(u.get("client-certificate"), base), _path(
        u.get("client-key"), base)
    if cert_data is not None or cert_file is not None:
        if cert_data is None:
            assert cert_file is not None
            cert_data = _file(cert_file, f"{where}: client-certificate")
        if key_data is None:
            if key_file is None:
                raise KubeConfigError(f"{where}: a client certificate needs its key: add "
                                      "client-key or client-key-data")
            key_data = _file(key_file, f"{where}: client-key")
        cert = (cert_data, key_data)
    credentials: Credentials = Credentials()
    if u.get("token"):
        credentials = bearer(str(u["token"]))
    elif u.get("tokenFile"):
        credentials = TokenFile(Path(_path(u["tokenFile"], base) or ""))
    elif u.get("username") and u.get("password"):
        credentials = basic(str(u["username"]), str(u["password"]))
    elif u.get("exec"):
        plugin = ExecPlugin(u["exec"], where=where, base=base, cluster=cluster)
        credentials = plugin
        if plugin.result.cert and plugin.result.key and cert is None:
            cert = (plugin.result.cert, plugin.result.key)
    return credentials, cert


def _file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KubeConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def kubeconfig_namespace(path: str | None, context: str | None) -> str | None:
    """The namespace of the kubeconfig context `context` (or, when it has none such, the
    current one); None when unset or no kubeconfig is usable."""
    try:
        config = KubeConfigFile.load(path)
        try:
            _, ctx = config.context(context)
        except KubeConfigError:
            _, ctx = config.context(None)
    except KubeConfigError:
        return None
    return str(ctx.get("namespace") or "") or None
