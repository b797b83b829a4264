"""Kubeconfig client certificates (`controller.kube_config`): the certificate and key, as
data or as files relative to the kubeconfig, are presented in the TLS handshake; the
server is verified against the kubeconfig's CA data. The server here is a small HTTPS
server that requires a client certificate from its own CA and answers with the name in
it (the test kube-apiserver authenticates by token only). Then the settings refused with
their fix, credentials never shown.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.drill.servers.certs import write_ca_and_cert
from controller.kube import Kube, KubeConnection, Unavailable
from controller.kube_config import KubeConfigFile, bearer
from controller.model import PermanentError
from controller.netutil import free_port

PLANS = "/apis/failover.example.io/v1alpha1/namespaces/ns/failoverplans"


def client_ca_and_cert(directory: Path, user: str) -> tuple[Path, Path, Path]:
    """A client CA and a certificate for `user` (clientAuth) it signs: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = directory / "client-ca.crt", directory / f"{user}.crt", directory / f"{user}.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class WhoAmI(http.server.BaseHTTPRequestHandler):
    """Lists one FailoverPlan named after the client certificate's common name."""

    def do_GET(self) -> None:
        peer: Any = self.connection.getpeercert()  # type: ignore[attr-defined]
        user = dict(x[0] for x in peer["subject"])["commonName"]
        body = json.dumps({"kind": "FailoverPlanList", "metadata": {"resourceVersion": "7"},
                           "items": [{"metadata": {"name": user}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[dict[str, Path | str]]:
    """An HTTPS server requiring a client certificate: its URL, CA and a client's files."""
    server_ca, cert, key = write_ca_and_cert(tmp_path, name="api")
    client_ca, client_cert, client_key = client_ca_and_cert(tmp_path, "alice")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), WhoAmI)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"https://127.0.0.1:{server.server_port}", "ca": server_ca,
               "cert": client_cert, "key": client_key}
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(path: Path, server: str, cluster: dict[str, Any],
               user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def b64(path: Path | str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_a_client_certificate_as_data_is_presented(
        tmp_path: Path, mtls: dict[str, Any]) -> None:
    path = kubeconfig(tmp_path / "config", mtls["url"],
                      {"certificate-authority-data": b64(mtls["ca"])},
                      {"client-certificate-data": b64(mtls["cert"]),
                       "client-key-data": b64(mtls["key"])})
    with Kube.connect(KubeConnection(kubeconfig=str(path))) as k:
        listed = k.list("failover.example.io", "v1alpha1", "ns", "failoverplans")
    assert [o["metadata"]["name"] for o in listed.items] == ["alice"]
    assert listed.resource_version == "7"
    assert not list(tmp_path.glob("**/kube-cert-*"))  # the PEM copies are gone


def test_client_certificate_files_are_relative_to_the_kubeconfig(
        tmp_path: Path, mtls: dict[str, Any]) -> None:
    path = kubeconfig(tmp_path / "config", mtls["url"],
                      {"certificate-authority": Path(mtls["ca"]).name},
                      {"client-certificate": Path(mtls["cert"]).name,
                       "client-key": str(mtls["key"])})
    with Kube.connect(KubeConnection(kubeconfig=str(path))) as k:
        listed = k.list("failover.example.io", "v1alpha1", "ns", "failoverplans")
    assert [o["metadata"]["name"] for o in listed.items] == ["alice"]


def test_without_the_client_certificate_the_server_refuses_the_handshake(
        tmp_path: Path, mtls: dict[str, Any]) -> None:
    path = kubeconfig(tmp_path / "config", mtls["url"],
                      {"certificate-authority": str(mtls["ca"])}, {"token": "t0ken-abcdef"})
    with Kube.connect(KubeConnection(kubeconfig=str(path), timeout=5)) as k, \
            pytest.raises(Unavailable, match=r"no answer from https://127\.0\.0\.1") as err:
        k.list("failover.example.io", "v1alpha1", "ns", "failoverplans")
    assert "t0ken-abcdef" not in str(err.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_skip_tls_verify_accepts_a_server_of_an_unknown_ca(
        tmp_path: Path, mtls: dict[str, Any]) -> None:
    path = kubeconfig(tmp_path / "config", mtls["url"], {"insecure-skip-tls-verify": True},
                      {"client-certificate-data": b64(mtls["cert"]),
                       "client-key-data": b64(mtls["key"])})
    with Kube.connect(KubeConnection(kubeconfig=str(path))) as k:
        assert k.list("failover.example.io", "v1alpha1", "ns", "failoverplans").items


@pytest.mark.parametrize(("user", "message"), [
    ({"client-certificate-data": "bm90IGEgY2VydA=="},
     "a client certificate needs its key: add client-key or client-key-data"),
    ({"client-key-data": "%%%"}, "client-key-data is not valid base64"),
    ({"auth-provider": {"name": "gcp"}},
     "auth-provider gcp is not supported .*use an exec credential plugin"),
    ({"exec": {"apiVersion": "client.authentication.k8s.io/v1"}}, "exec has no command"),
    ({"client-certificate-data": "bm90IGEgY2VydA==", "client-key-data": "bm90IGEga2V5"},
     "the CA or client certificate cannot be used"),
])
def test_unusable_user_settings_name_the_field_and_the_fix(
        tmp_path: Path, user: dict[str, Any], message: str) -> None:
    path = kubeconfig(tmp_path / "config", "https://127.0.0.1:1", {}, user)
    with pytest.raises(PermanentError, match=message) as err:
        Kube.connect(KubeConnection(kubeconfig=str(path)))
    assert f"kubeconfig {path}, context c" in str(err.value)


def test_a_missing_kubeconfig_and_one_that_is_not_yaml_are_named(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=f"kubeconfig {tmp_path / 'absent'}: cannot read"):
        Kube.connect(KubeConnection(kubeconfig=str(tmp_path / "absent")))
    (tmp_path / "bad").write_text("users: [\n")
    with pytest.raises(PermanentError, match="not valid YAML"):
        KubeConfigFile.load(str(tmp_path / "bad"))


def test_credentials_never_show_the_token() -> None:
    token = "s3cret-token-value-0123456789"
    assert token not in repr(bearer(token))
    assert bearer(token).authorization() == f"Bearer {token}"
