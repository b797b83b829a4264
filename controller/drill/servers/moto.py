"""moto server launcher: AWS APIs (Route 53, S3) on a free loopback port, in this process.

Owns one `moto.server.ThreadedMotoServer` (a werkzeug server in a daemon thread): started
on a port picked free at run time, waited on until it answers, stopped by `stop()`. It
runs in-process, so there is no PID to signal; its state is per server and vanishes with
it. Fidelity gaps to remember (cover them with botocore's Stubber instead): every Route 53
change is INSYNC at once; CREATE over an existing record set is accepted; and a CREATE
identical to one already in the zone's change journal is refused as "already exists"
even when the same batch first DELETEs that set (AWS accepts DELETE+CREATE in one batch),
so swapping back to a value that was itself CREATEd fails on moto only.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Any

from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServer(Launcher):
    """`with MotoServer() as moto: boto3.client("route53", endpoint_url=moto.endpoint, ...)`."""

    def __init__(self, *, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self, *, timeout: float = 20.0) -> MotoServer:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ServerError(f"moto's server is not installed ({exc}): pip install "
                              "'moto[s3,route53]' flask flask-cors") from None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per call
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                          verbose=False)
        self._server.start()
        try:
            wait_ready(f"moto server on {self.endpoint}", self._answers, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        # any HTTP answer means it serves. Not /moto-api/data.json: the server runs in this
        # process, so that page serializes every backend's state, which earlier tests'
        # objects can make fail with 500.
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True

    def client(self, service: str) -> Any:
        """A boto3 client for `service` pointed at this server with dummy credentials."""
        import boto3

        return boto3.client(service, region_name="us-east-1", endpoint_url=self.endpoint,
                            **CREDENTIALS)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
