"""Secret references and the redaction that keeps secret values out of every output.

A plan never holds a secret value, only a `SecretRef` saying where to read it (a file, an
environment variable or a Kubernetes Secret). `Secrets.reveal` reads it and remembers
the value, so `redact` can scrub it from any text that is about to be logged, stored in
the journal, shown in status or raised in an exception.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

MASK = "***"


class KubeSecretKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    key: str
    namespace: str | None = None


class SecretRef(BaseModel):
    """Where a secret lives: exactly one of fromFile, fromEnv, fromSecret."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_file: str | None = Field(default=None, alias="fromFile")
    from_env: str | None = Field(default=None, alias="fromEnv")
    from_secret: KubeSecretKey | None = Field(default=None, alias="fromSecret")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [x for x in (self.from_file, self.from_env, self.from_secret) if x is not None]
        if len(given) != 1:
            raise ValueError(
                "a secret reference needs exactly one of fromFile, fromEnv or fromSecret "
                "(write e.g. `fromFile: /etc/failover/tsig.key`; never put the value itself)"
            )
        return self

    def describe(self) -> str:
        if self.from_file:
            return f"file {self.from_file}"
        if self.from_env:
            return f"environment variable {self.from_env}"
        assert self.from_secret is not None
        return f"Secret {self.from_secret.name}/{self.from_secret.key}"


class SecretError(Exception):
    """A secret could not be read; the message names where it was looked for, never a value."""


_known: set[str] = set()
_lock = threading.Lock()


def remember(value: str) -> None:
    with _lock:
        for part in {value, value.strip()}:
            if len(part) >= 4:
                _known.add(part)


def redact(text: str) -> str:
    """Replace every secret value revealed in this process with ***."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    return text


KubeReader = Callable[[KubeSecretKey], bytes]


class Secrets:
    """Resolves SecretRefs; the Kubernetes reader is injected by the operator."""

    def __init__(self, *, kube_reader: KubeReader | None = None, base_dir: Path | None = None):
        self._kube_reader = kube_reader
        self._base_dir = base_dir

    def reveal(self, ref: SecretRef) -> str:
        if ref.from_env:
            value = os.environ.get(ref.from_env)
            if value is None:
                raise SecretError(f"secret {ref.describe()} is not set")
        elif ref.from_file:
            path = Path(ref.from_file)
            if not path.is_absolute() and self._base_dir is not None:
                path = self._base_dir / path
            try:
                value = path.read_text()
            except OSError as exc:
                raise SecretError(
                    f"secret {ref.describe()} cannot be read: {exc.strerror}"
                ) from None
        else:
            assert ref.from_secret is not None
            if self._kube_reader is None:
                raise SecretError(
                    f"secret {ref.describe()} needs Kubernetes access; run in the operator "
                    "or use fromFile/fromEnv"
                )
            value = self._kube_reader(ref.from_secret).decode()
        remember(value)
        return value

    def reveal_bytes(self, ref: SecretRef) -> bytes:
        """For binary keys stored base64-encoded (e.g. the backup encryption key)."""
        text = self.reveal(ref).strip()
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise SecretError(f"secret {ref.describe()} is not valid base64") from None
        remember(text)
        return raw


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs revealed secrets from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
