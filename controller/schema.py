"""Schema primitives every plan-shaped model builds on: durations, names, percentages, `Strict`.

Owns the field types shared by the plan (`controller.plan`) and by the option models of
its plug-ins (probes, backends, step params, database roles). They live below the plan so
that a plug-in can validate its options without importing the plan, which imports the
registry, which finds the plug-ins: every import from here points down. `controller.plan`
re-exports these names for code that imports them from there.

Durations read '250ms', '90s', '1h30m' or a number of seconds and serialize to a string
that reads back to the same number, so a dumped plan loads unchanged.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """'90s', '1h', '1h30m', '250ms' or a number of seconds -> seconds (float, >= 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '90s' or '1h', not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"duration {value!r} is negative; use a positive value like '30s'")
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ValueError(
                f"cannot read duration {value!r}; write a number with a unit: "
                "'250ms', '90s', '5m', '1h', '1h30m'"
            )
    else:
        raise ValueError(f"expected a duration such as '90s' or '1h', got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} is not a number of seconds; use e.g. '30s'")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative; use a positive value like '30s'")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {value!r} is longer than 10 years; use at most '3650d'")
    if 0 < seconds < 0.001:
        raise ValueError(f"duration {value!r} is shorter than a millisecond; use 0 or at "
                         "least '1ms'")
    return seconds


MAX_DURATION = 3650 * 86400.0  # longer is a typo, and would overflow dates built from it


def format_duration(seconds: float) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"  # never 1e-07s: it reads back


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"}),
]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 (a zero interval makes a loop spin, a zero "
                         "timeout fails before anything is tried); use a positive duration "
                         "such as '10s'")
    return seconds


# a duration of at least one non-zero number: the API server rejects "0s" with the same rule
POSITIVE_DURATION_PATTERN = (r"^(\d+(\.\d+)?(ms|s|m|h|d))*(\d*[1-9]\d*(\.\d+)?|\d+\.\d*[1-9]\d*)"
                             r"(ms|s|m|h|d)(\d+(\.\d+)?(ms|s|m|h|d))*$")
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": POSITIVE_DURATION_PATTERN}),
]
"""An interval or timeout: 0 would make a probe loop spin or a step fail unstarted."""
Percent = Annotated[float, Field(ge=0, le=100)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", max_length=63)]


class Strict(BaseModel):
    """A model that rejects unknown fields (a typo fails loudly) and accepts field aliases."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def unique(field: str, names: list[str]) -> None:
    """Refuse a list of named items with a name twice, naming the list and the name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: duplicate name {name!r}; names must be unique")
        seen.add(name)
