"""Process settings (pydantic-settings, env prefix FAILOVER_), validated once at start.

Plans say *what* to fail over; settings say how this process runs: where its journal is,
who it acts as, how often it ticks.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_journal() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "failoverctl" / "journal.db"


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAILOVER_", extra="ignore")

    journal: Path = Field(default_factory=_default_journal,
                          description="SQLite journal of runs, steps, decisions and audit")
    actor: str = Field(default_factory=_default_actor,
                       description="who this process acts as in the audit trail")
    log_level: str = Field("WARNING", pattern="^(DEBUG|INFO|WARNING|ERROR)$",
                           description="level of the controller's own logs (-v: DEBUG); "
                                       "libraries log at WARNING unless -v")
    tick: float = Field(1.0, gt=0, description="seconds between reconcile cycles")
    lease_ttl: float = Field(30.0, gt=0, description="seconds a lease is held without renewal")
