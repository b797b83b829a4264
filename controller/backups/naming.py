"""Backup names: `<date>_<dataset>_<kind>`, so date, data set and kind show in a listing.

Owns the one naming rule of the emergency plans (`<date>_<dataset>_<type>.bak`): the
date is UTC `YYYYMMDDTHHMMSSZ` so names sort by time, the data set is lower-case letters,
digits and dashes (the underscore is the separator), the kind one of `KINDS`. Every
store lays a backup out as `<name>/<name>.bak` (payload) and `<name>/catalog.json`.
"""

from __future__ import annotations

import datetime as dt
import re

from controller.plan import DATASET_PATTERN

KINDS = ("continuous", "daily", "full", "incremental")
DATASET = re.compile(DATASET_PATTERN)
_NAME = re.compile(r"^(\d{8}T\d{6}Z)_([a-z0-9][a-z0-9-]*)_([a-z]+)$")
_FMT = "%Y%m%dT%H%M%SZ"


def check_dataset(dataset: str) -> str:
    if not DATASET.match(dataset):
        raise ValueError(f"data set name {dataset!r} must be lower-case letters, digits and "
                         "dashes (no underscores: they separate date, data set and kind)")
    return dataset


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"backup kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def backup_name(*, taken_at: float, dataset: str, kind: str) -> str:
    stamp = dt.datetime.fromtimestamp(taken_at, dt.UTC).strftime(_FMT)
    return f"{stamp}_{check_dataset(dataset)}_{check_kind(kind)}"


def parse_name(name: str) -> tuple[float, str, str] | None:
    """(taken_at, dataset, kind) of a well-formed name, else None."""
    m = _NAME.match(name)
    if not m or m.group(3) not in KINDS:
        return None
    when = dt.datetime.strptime(m.group(1), _FMT).replace(tzinfo=dt.UTC).timestamp()
    return when, m.group(2), m.group(3)


def payload_key(name: str) -> str:
    return f"{name}/{name}.bak"


def catalog_key(name: str) -> str:
    return f"{name}/catalog.json"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
