"""`failoverctl run --listen ... --tls-cert ... --tls-key ...`: /metrics, /healthz and
/readyz over HTTPS, with a certificate made by `openssl` here, read by a client that
verifies it; and the clear refusals of a missing file or a key that is not the cert's."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controller.drill.servers.base import free_port
from tests.e2e.test_cli import ROOT, cli, file_plan


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, and a certificate it signed for 127.0.0.1 / localhost (EC P-256)."""
    d = tmp_path / "pki"
    d.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj",
            "/CN=failover test CA", "-days", "1", cwd=d)
    openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost",
            cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "tls.crt", "-days", "1", "-extfile", "san.ext", cwd=d)
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", "other.key", cwd=d)
    return d


def test_the_endpoints_serve_https_that_a_verifying_client_trusts(
        tmp_path: Path, pki: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(tmp_path / "j.db"), "run",
         str(file_plan(tmp_path)), "--interval", "0.1", "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(pki / "tls.crt"), "--tls-key", str(pki / "tls.key")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trusting = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    try:
        base = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        metrics, healthy = "", 'failover_plan_phase{phase="Healthy",plan="memory-drill"} 1.0'
        while time.monotonic() < deadline and healthy not in metrics:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(base + "/metrics", context=trusting,
                                            timeout=5) as resp:
                    metrics = resp.read().decode()
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ssl.SSLError):
                    raise
        assert healthy in metrics
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(base + path, context=trusting, timeout=5) as resp:
                assert resp.status == 200
        # a client that does not trust the CA refuses the server; plain HTTP gets nothing
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.urlopen(base + "/healthz", context=ssl.create_default_context(),
                                   timeout=5)
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        with urllib.request.urlopen(base + "/healthz", context=trusting, timeout=5) as resp:
            assert resp.status == 200  # and the server still serves after both
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_missing_file_or_a_key_that_is_not_the_certs_is_refused_at_start(
        tmp_path: Path, pki: Path) -> None:
    plan, journal = str(file_plan(tmp_path)), tmp_path / "j.db"
    listen = ("--listen", f"127.0.0.1:{free_port()}", "--ticks", "1")
    missing = cli("run", plan, *listen, "--tls-cert", str(pki / "tls.crt"),
                  "--tls-key", str(pki / "nope.key"), journal=journal)
    assert missing.returncode == 2
    assert f"--tls-key {pki / 'nope.key'}: no such file" in missing.stderr
    mismatch = cli("run", plan, *listen, "--tls-cert", str(pki / "tls.crt"),
                   "--tls-key", str(pki / "other.key"), journal=journal)
    assert mismatch.returncode == 2
    assert "the private key does not match the certificate" in mismatch.stderr
    half = cli("run", plan, *listen, "--tls-cert", str(pki / "tls.crt"), journal=journal)
    assert half.returncode == 2 and "give both --tls-cert and --tls-key" in half.stderr
    assert "Traceback" not in missing.stderr + mismatch.stderr + half.stderr
