"""Secret references and the redaction that keeps secret values out of every output.

A plan never holds a secret value, only a `SecretRef` saying where to read it (a file, an
environment variable or a Kubernetes Secret). `Secrets.reveal` reads it and remembers
the value, so `redact` can scrub it from any message that is about to be logged, stored
in the journal, shown in status or raised in an exception.

`redact` is for messages only (errors, sentences, details): it changes text, so it must
never run over a serialised record, a key, a number, a name or an id — a secret `test`
would turn a step `link-test` into `link-***`, and `7000` a timestamp into `179***000`.
How much of a secret's length makes it safe to scrub, and why:

- **8 characters or more** are scrubbed wherever they appear in a message: a random
  value that long does not occur in ordinary text by chance.
- **4 to 7 characters** are scrubbed only where they stand as a word (not inside a
  longer word, number, id or hash — `7000` is not scrubbed out of `1797000000`), and
  revealing one logs a warning: as a substring such a value matches timestamps, names
  and ids, and as a word it can still show glued to other letters or digits.
- **1 to 3 characters** are refused (`SecretError`): they match ordinary words and
  numbers, so they cannot be kept out of messages at all.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
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


SAFE_LENGTH = 8
"""A secret this long is scrubbed wherever it appears; a shorter one only as a word."""
MIN_LENGTH = 4
"""A shorter secret is refused: it cannot be kept out of messages."""

log = logging.getLogger(__name__)

_known: set[str] = set()
_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None  # rebuilt after _known changes
_warned: set[tuple[str, str]] = set()  # (reference, value) already warned about as short
# a short secret counts as a word when no letter, digit, _ or - touches it, and no . on
# its left (1797000000.7000) nor a "." followed by more of the word on its right
_WORD_BEFORE, _WORD_AFTER = r"(?<![\w.-])", r"(?![\w-]|\.[\w-])"


def _check(value: str) -> None:
    n = len(value.strip())
    if 0 < n < MIN_LENGTH:
        raise SecretError(f"a secret value of {n} character{'s' if n != 1 else ''} is "
                          f"too short to keep out of messages; use at least {SAFE_LENGTH}")


def remember(value: str) -> None:
    """Scrub `value` (and its stripped form) from every message from now on. Raises
    SecretError for a value too short to scrub (1-3 characters); empty is nothing."""
    global _pattern
    _check(value)
    with _lock:
        for part in {value, value.strip()}:
            if len(part.strip()) >= MIN_LENGTH and part not in _known:
                _known.add(part)
                _pattern = None


def forget(*values: str) -> None:
    """Stop scrubbing `values` (a secret rotated out, or a test's own values)."""
    global _pattern
    with _lock:
        for value in values:
            for part in {value, value.strip()}:
                _known.discard(part)
        _warned.difference_update({w for w in _warned if w[1] in values})
        _pattern = None


def _compiled() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _known:
            ordered = sorted(_known, key=len, reverse=True)  # the longest match first
            long = [re.escape(v) for v in ordered if len(v.strip()) >= SAFE_LENGTH]
            short = [re.escape(v) for v in ordered if len(v.strip()) < SAFE_LENGTH]
            parts = long + ([f"{_WORD_BEFORE}(?:{'|'.join(short)}){_WORD_AFTER}"]
                            if short else [])
            _pattern = re.compile("|".join(parts))
        return _pattern


def redact(text: str, keep: Sequence[str] = ()) -> str:
    """Replace every secret value revealed in this process with *** in a message (never
    in a serialised record: see the module docstring). The parts of `text` named in
    `keep` (ids, keys, routes a reader parses back) are left exactly as they are."""
    pattern = _compiled()
    if pattern is None:
        return text
    kept = sorted({k for k in keep if k}, key=len, reverse=True)
    if not kept:
        return pattern.sub(MASK, text)
    out, pos = [], 0
    for match in re.finditer("|".join(map(re.escape, kept)), text):
        out += [pattern.sub(MASK, text[pos:match.start()]), match.group()]
        pos = match.end()
    return "".join([*out, pattern.sub(MASK, text[pos:])])


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
        self._accept(ref, value)
        return value

    @staticmethod
    def _accept(ref: SecretRef, value: str) -> None:
        """Refuse a secret too short to scrub; warn (once per reference) about a short one."""
        n = len(value.strip())
        where = ref.describe()
        if 0 < n < MIN_LENGTH:
            raise SecretError(f"secret {where} is {n} character{'s' if n != 1 else ''} long: "
                              "too short to keep out of messages (a value this short matches "
                              "ordinary words and numbers); use a secret of at least "
                              f"{SAFE_LENGTH} characters")
        remember(value)
        with _lock:
            warn = 0 < n < SAFE_LENGTH and (where, value) not in _warned
            _warned.add((where, value))
        if warn:
            log.warning("secret %s is only %d characters: it is scrubbed from messages only "
                        "where it stands as a word, and can show inside longer words or "
                        "numbers; use a secret of at least %d characters", where, n,
                        SAFE_LENGTH)

    def reveal_bytes(self, ref: SecretRef) -> bytes:
        """For binary keys stored base64-encoded (e.g. the backup encryption key)."""
        text = self.reveal(ref).strip()
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise SecretError(f"secret {ref.describe()} is not valid base64") from None
        self._accept(ref, text)
        return raw


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs revealed secrets from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
