"""Reaching the real kube-apiserver the ways a user configures it (`controller.kube_config`):
a kubeconfig with an inline token, a token file, an exec credential plugin, the CA as
data; the context chosen by name; `$KUBECONFIG` as a list of files; and in-cluster, from a
ServiceAccount directory as the kubelet mounts it. Each client proves it is the
controller's identity by doing what only that identity's RBAC allows.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import kube_config
from controller.drill.servers.kube import KubeServers
from controller.kube import Kube, KubeConnection, Unauthorized, connect, default_namespace
from controller.model import PermanentError

PLAN = ("failover.example.io", "v1alpha1")


def write_kubeconfig(path: Path, kube: KubeServers, user: dict[str, Any], *,
                     cluster: dict[str, Any] | None = None, namespace: str = "",
                     current: str | None = "ctl") -> Path:
    """A kubeconfig with context `ctl` (the user given) and `broken` (no such user)."""
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster or {
            "server": kube.url, "certificate-authority": str(kube.ca_file)}}],
        "users": [{"name": "ctl-user", "user": user}],
        "contexts": [{"name": "ctl", "context": {"cluster": "local", "user": "ctl-user",
                                                 **({"namespace": namespace}
                                                    if namespace else {})}},
                     {"name": "broken", "context": {"cluster": "local", "user": "nobody"}}],
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def lists_plans(k: Kube, kube: KubeServers) -> bool:
    """Listing FailoverPlans in the controller's namespace: what the controller may do."""
    return bool(k.list(*PLAN, kube.namespace, "failoverplans").resource_version)


def test_a_kubeconfig_with_an_inline_token_and_the_ca_as_data(
        tmp_path: Path, kube: KubeServers) -> None:
    assert kube.ca_file is not None
    ca = base64.b64encode(kube.ca_file.read_bytes()).decode()
    path = write_kubeconfig(tmp_path / "config", kube, {"token": kube.token("controller")},
                            cluster={"server": kube.url, "certificate-authority-data": ca},
                            namespace=kube.namespace)
    conn = KubeConnection(kubeconfig=str(path))
    with Kube.connect(conn) as k:
        assert k.host == kube.url and lists_plans(k, kube)
        assert k.whoami() == kube.identities["controller"].user
        assert kube.token("controller") not in repr(k)
    assert default_namespace(conn) == kube.namespace


def test_a_token_file_relative_to_the_kubeconfig_is_read_again_after_a_minute(
        tmp_path: Path, kube: KubeServers) -> None:
    (tmp_path / "token").write_text(kube.token("controller") + "\n")
    path = write_kubeconfig(tmp_path / "config", kube, {"tokenFile": "token"})
    with Kube.connect(KubeConnection(kubeconfig=str(path))) as k:
        assert lists_plans(k, kube)
        (tmp_path / "token").write_text("rotated-out-0123456789abcdef")
        assert lists_plans(k, kube)  # the token read at connect is used for a minute
        credentials = k.transport.config.credentials
        assert isinstance(credentials, kube_config.TokenFile)
        credentials.max_age = 0  # as a minute later: the file is read again
        with pytest.raises(Unauthorized) as err:
            k.list(*PLAN, kube.namespace, "failoverplans")
        assert "rotated-out" not in str(err.value)


def test_an_exec_credential_plugin_gives_the_token(tmp_path: Path, kube: KubeServers) -> None:
    plugin = tmp_path / "credential.py"
    plugin.write_text(
        "import json, os, sys\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential', info\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',"
        " 'status': {'token': open(sys.argv[1]).read().strip()}}))\n")
    token_file = kube.identities["controller"].token_file
    path = write_kubeconfig(tmp_path / "config", kube, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": [str(plugin), str(token_file)], "interactiveMode": "Never"}})
    with Kube.connect(KubeConnection(kubeconfig=str(path))) as k:
        assert lists_plans(k, kube)


def test_an_exec_plugin_that_fails_says_which_and_its_install_hint(
        tmp_path: Path, kube: KubeServers) -> None:
    path = write_kubeconfig(tmp_path / "config", kube, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": "no-such-plugin-h20m",
        "installHint": "install it with: apt-get install no-such-plugin"}})
    with pytest.raises(PermanentError, match="exec credential plugin no-such-plugin-h20m is "
                       "not installed \\(install it with: apt-get install no-such-plugin\\)"):
        Kube.connect(KubeConnection(kubeconfig=str(path)))


def test_the_context_is_chosen_by_name_and_a_wrong_one_names_the_others(
        tmp_path: Path, kube: KubeServers) -> None:
    path = write_kubeconfig(tmp_path / "config", kube, {"token": kube.token("controller")},
                            current="broken")
    with pytest.raises(PermanentError, match="no user named 'nobody'"):
        Kube.connect(KubeConnection(kubeconfig=str(path)))
    with Kube.connect(KubeConnection(kubeconfig=str(path), context="ctl")) as k:
        assert lists_plans(k, kube)
    with pytest.raises(PermanentError, match="no context named 'prod'; it has: ctl, broken"):
        Kube.connect(KubeConnection(kubeconfig=str(path), context="prod"))


def test_kubeconfig_env_is_a_list_of_files_the_first_naming_an_entry_wins(
        tmp_path: Path, kube: KubeServers, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "first"
    first.write_text(yaml.safe_dump({"current-context": "ctl"}))
    second = write_kubeconfig(tmp_path / "second", kube, {"token": kube.token("controller")},
                              current="broken")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with connect() as k:
        assert lists_plans(k, kube)


def test_in_cluster_from_the_service_account_directory(
        tmp_path: Path, kube: KubeServers, monkeypatch: pytest.MonkeyPatch) -> None:
    assert kube.ca_file is not None
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(kube.token("controller"))
    (sa / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    (sa / "namespace").write_text(kube.namespace)
    host, port = kube.url.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setattr(kube_config, "SERVICE_ACCOUNT", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    for conn in (KubeConnection(in_cluster=True), KubeConnection()):  # explicit, or in a pod
        with Kube.connect(conn) as k:
            assert lists_plans(k, kube)
            assert k.whoami() == kube.identities["controller"].user
        assert default_namespace(conn) == kube.namespace

    (sa / "token").unlink()
    with pytest.raises(PermanentError, match=f"in-cluster: {sa / 'token'} does not exist"):
        Kube.connect(KubeConnection(in_cluster=True))
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT")
    with pytest.raises(PermanentError, match="KUBERNETES_SERVICE_PORT are not set"):
        Kube.connect(KubeConnection(in_cluster=True))

