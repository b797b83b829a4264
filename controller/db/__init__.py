"""Databases: a PostgreSQL primary and its streaming standby, as a promotion and a failback
see them.

Owns the `Database` protocol (role `database`) and the lazy registry of its kinds: what a
`promote` step reads of a node (`state`: in recovery or not, timeline, LSN, streaming,
lag), and the two world-changing calls it makes, in that order: `fence` the old primary
(stop it over SSH, make it refuse writes over SQL, or run the plan's STONITH command),
then `promote` the standby. A failback (`db-failback`) adds the calls that rebuild a node
as a standby of another: `stop` it cleanly, size a rewind (from SQL first: `size`, the
WAL the other wrote and its databases' size; then, when a rewind could still be cheaper,
`rewind_size`, a dry run), `rewind` it onto the other's timeline or replace its data
with a `basebackup`, then `follow` (standby.signal, primary_conninfo,
`primary_slot_name`, start). A promotion keeps WAL for the node it replaced in a
physical replication slot (`create_slot`, `drop_slot`): a rewound node replays from
before the fork, and must find that WAL still there however long the incident wrote.
Why the split: the steps own the order and the decisions (the RPO budget, which fence,
never a promote before a fence, how to rebuild), the backend owns how a node is
reached, so the in-memory fake (`controller.testing_db`) and the real server
(`controller.db.postgres`) answer the same calls and run through the same contract
tests. Every world-changing call checks `fencing.check()` first; the waits
inside one are `fencing.pause`, so a cancelled step stops.

A node is named by how it is reached (`Node`): its SQL address, and for an `ssh-stop`
fence the host to SSH to and its data directory (`postmaster.pid` there names the PID
to stop). LSNs are byte positions (`lsn_text` writes them as PostgreSQL does).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import Field

from controller.model import Evidence, PermanentError
from controller.schema import Strict

KINDS: dict[str, str] = {
    "memory": "controller.testing_db:FakeDatabase",
    "postgres": "controller.db.postgres:PostgresDatabase",
}


class Node(Strict):
    """How to reach one PostgreSQL server."""

    host: str = Field(description="host name, address or unix-socket directory for SQL")
    port: int = Field(5432, ge=1, le=65535)
    ssh: str | None = Field(None, description="host to SSH to for an ssh-stop fence "
                            "(default: run on this machine)")
    ssh_port: int | None = Field(None, alias="sshPort", ge=1, le=65535,
                                 description="default: the backend's ssh.port")
    data: str | None = Field(None, description="its data directory (ssh-stop: the PID in "
                             "postmaster.pid there is stopped)")
    start_command: list[str] | None = Field(
        None, alias="startCommand", min_length=1,
        description="how its server is started on its host (argv, run as the database's "
        "OS user; it returns once the server accepts connections), for a cluster "
        "configured outside its data directory, e.g. Debian's [pg_ctlcluster, '15', main, "
        "start] (config in /etc/postgresql/15/main); default: pg_ctl start -w on the data "
        "directory, whose postgresql.conf it reads")

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


class FenceMethod(enum.StrEnum):
    SSH_STOP = "ssh-stop"  # stop the postmaster by its PID (fast shutdown), over SSH
    SQL = "sql"  # default_transaction_read_only=on, reload, end every client session
    COMMAND = "command"  # the plan's STONITH hook, run on the controller's host


@dataclass(frozen=True)
class NodeState:
    """What one node says of itself now (read-only)."""

    in_recovery: bool
    timeline: int
    lsn: int  # a primary: its current WAL position; a standby: what it has replayed
    streaming: bool  # a standby: its WAL receiver streams from a primary
    lag_seconds: float  # a standby: how far its replay is behind (0: replayed all received)
    read_only: bool  # default_transaction_read_only (a primary fenced over SQL)

    @property
    def writable(self) -> bool:
        return not self.in_recovery and not self.read_only


@dataclass(frozen=True)
class Promoted:
    """A promotion as the promoted node told it, in the session that promoted it."""

    state: NodeState  # read once it left recovery (or when the wait for that ended)
    values: list[str]  # each query's first row (columns joined by '|'; '' for no row)


@dataclass(frozen=True)
class Slot:
    name: str
    active: bool
    retained_bytes: int  # WAL the slot keeps on the node


def lsn_text(lsn: int) -> str:
    """A byte position as PostgreSQL writes an LSN ('0/3000060')."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class Unreachable(ConnectionError):
    """The node (or its host) does not answer: it may be down, or cut off from us."""


class NotInRecovery(PermanentError):
    """A promotion was asked of a node that is not in recovery (a primary already)."""


class StartFailed(PermanentError):
    """A node did not start (accept connections) in time: e.g. a rewound node whose WAL
    since the fork is gone on its source cannot reach a consistent state."""


@dataclass(frozen=True)
class NodeSize:
    """What a primary says in SQL of the WAL it wrote and of its size: a rewind sized
    without a dry run (the WAL since a fork is at most its LSN less the fork's, and at
    most what it generated since its statistics began)."""

    lsn: int  # its current WAL position
    wal_bytes: int  # WAL it generated since its statistics began (no segment padding)
    databases_bytes: int  # its databases' size: what a base backup copies, WAL aside


@dataclass(frozen=True)
class RewindSize:
    """What `pg_rewind --dry-run` says a rewind would copy, against the source's size."""

    copy_mb: int
    source_mb: int


class RewindFailed(PermanentError):
    """`pg_rewind` could not bring the node onto the source's timeline (WAL gone, no
    `wal_log_hints`/checksums...): a fresh base backup is what is left."""


@runtime_checkable
class Database(Protocol):
    def state(self, node: Node) -> NodeState:
        """Read the node's recovery state, timeline, LSN, streaming and lag; raises
        `Unreachable` when it does not answer."""
        ...

    def fence(self, node: Node, *, method: FenceMethod,
              command: list[str] | None = None) -> Evidence:
        """Make `node` unable to accept writes (idempotent: a node fenced already is
        reported so, nothing changed): `ssh-stop` stops its postmaster by PID and waits
        for it to exit; `sql` makes it refuse writes and ends every client session;
        `command` runs `command` (the STONITH hook, argv) on this machine. Raises
        `Unreachable` when the method cannot reach the node. Evidence: how, and the
        node's last LSN when it could still be read."""
        ...

    def check_fence(self, node: Node, *, method: FenceMethod,
                    command: list[str] | None = None, dry_run: bool = False) -> str:
        """Read-only: could `fence` work now? (SSH answers and the data directory holds a
        postmaster.pid; SQL answers; the command exists, or with `dry_run` the command
        with a `--dry-run` argument exits 0.)"""
        ...

    def promote(self, node: Node, *, timeout: float,
                queries: Sequence[str] = ()) -> Promoted:
        """Promote the standby, waiting at most `timeout` seconds for it to leave recovery,
        then, in the same session, read its state and run `queries` read-only (the
        caller checks the state: a promotion that did not land in time is not raised
        here). Raises `NotInRecovery` when `node` is not in recovery: nothing changed."""
        ...

    def stop(self, node: Node) -> Evidence:
        """Stop the node's server cleanly (fast shutdown: its walsenders send what they have
        first) and wait for it to exit; idempotent (a stopped node is reported `already`).
        Evidence: its last checkpoint LSN (`lastLsn`) when it can be read; where its WAL
        ends (`walEnd`: the start of its last record) when that is known (a primary shut
        down cleanly: its shutdown checkpoint; after a crash, when its WAL can be read);
        `lastLsnFrom` says how."""
        ...

    def size(self, node: Node) -> NodeSize:
        """Read-only, one query of the primary `node`: its WAL position, the WAL it
        generated since its statistics began, and its databases' size."""
        ...

    def rewind_size(self, node: Node, *, source: Node) -> RewindSize:
        """Read-only: what a rewind of the stopped `node` onto `source` would copy (a dry
        run). Raises `RewindFailed` when it cannot be rewound."""
        ...

    def rewind(self, node: Node, *, source: Node) -> Evidence:
        """`pg_rewind` the stopped `node` onto `source`'s timeline (`rewound`: false when no
        rewind was needed). Raises `RewindFailed` when it cannot be rewound, PermanentError
        when `node` is running."""
        ...

    def basebackup(self, node: Node, *, source: Node, aside: str) -> Evidence:
        """Replace the stopped `node`'s data with a fresh base backup of `source`. The data
        it had is moved aside (to `DATA.aside`), never deleted; a retry with the same
        `aside` keeps what the first attempt moved there."""
        ...

    def follow(self, node: Node, *, source: Node, slot: str | None = None) -> Evidence:
        """Make the stopped `node` a streaming standby of `source` (standby.signal,
        primary_conninfo, `primary_slot_name` = `slot` when given, a SQL fence lifted: a
        standby refuses writes by being one) and start it. Idempotent: a node in
        recovery already is reported `already`. Raises `StartFailed` when it does not
        start in time (it may still be running, in recovery: `stop` it)."""
        ...

    def create_slot(self, node: Node, name: str) -> Evidence:
        """Create physical replication slot `name` on `node`, keeping WAL from its last
        checkpoint's redo on (before a promotion's fork); idempotent (`already`)."""
        ...

    def drop_slot(self, node: Node, name: str) -> Evidence:
        """Drop replication slot `name` on `node` (a primary or a standby); idempotent
        (`already`: there was none)."""
        ...

    def unfence(self, node: Node, *, method: FenceMethod) -> Evidence:
        """Undo a `sql` or `ssh-stop` fence of a primary: it takes writes again (read-only
        lifted, or started as it was). Idempotent (`already`); for a failback that fenced
        the promoted node and then could not switch."""
        ...

    def query(self, node: Node, sql: str) -> str:
        """Run one read-only query; its first column of the first row, as text."""
        ...

    def slots(self, node: Node) -> list[Slot]:
        """The node's replication slots and the WAL each keeps."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None


def state_or_none(db: Database, node: Node) -> NodeState | None:
    """The node's state, or None when it does not answer (`Unreachable`)."""
    try:
        return db.state(node)
    except Unreachable:
        return None
