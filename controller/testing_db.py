"""The in-memory database pair (`kind: memory`, role `database`): a primary and a
streaming standby, for unit tests, the simulation and drills without PostgreSQL.

Owns a fake with the real backend's contract (`controller.db.Database`, held to it by
`tests/contract/db/`): nodes are named by `Node.host`; a node that is down or whose
host is cut off raises `Unreachable`; a fence is idempotent and says so; a promotion of a
node not in recovery is refused; a promotion moves the node to the next timeline.

Data, for the failback's "no committed write lost": each node holds the rows committed
on it (`commit`, a client's write: accepted by a node that takes writes), and a standby
streaming from its `upstream` on the same timeline has every row the upstream has (the
stream is instant) unless it lags (`lagBytes`: its replay stays that far behind) or the
two histories diverged. `rewind` and `basebackup` give a stopped node the source's rows
and timeline (`rewindable: false` makes a rewind fail; `rewindMb` is what a dry run says
a rewind onto the node would copy, of the source's `sizeMb`; `size` reads a node's LSN,
`walBytes`, what it wrote (commits, or set), and `sizeMb`), `follow` starts it as the
source's standby (with `primary_slot_name`: it streams only when the source has that
slot; `startsRewound: false` makes a rewound node fail to start, `streamsRewound: false`
start but never stream, as one whose WAL since the fork is gone), `unfence` undoes a
fence. Replication slots (`create_slot`, `drop_slot`) keep the WAL from the node's LSN
when made (a rewound node keeps its own, a base backup copies none); one is active while
a standby streams through it. Like the other fakes, every write checks the step's fence
and refuses a token older than one it accepted (`controller.testing._fenced`), and
records its token and holder. Faults are set with `set_node` (outside any step: no
fence), state is shared by `key` (or a `stateFile`, for a drill's processes) like the
other fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from controller.backups.hosts import LocalHost
from controller.db import (
    Database,
    FenceMethod,
    Node,
    NodeSize,
    NodeState,
    NotInRecovery,
    Promoted,
    RewindFailed,
    RewindSize,
    Slot,
    StartFailed,
    Unreachable,
    lsn_text,
)
from controller.model import Evidence, PermanentError
from controller.testing import FakeOptions, _fenced, _state

START_LSN = 0x3000000


class FakeDatabaseOptions(FakeOptions):
    primary: str = "dc-a"
    standby: str = "dc-b"
    lag_bytes: int = Field(0, alias="lagBytes", ge=0)
    lag_seconds: float = Field(0.0, alias="lagSeconds", ge=0)
    streaming: bool = True
    slot_bytes: int = Field(0, alias="slotBytes", ge=0, description="WAL the standby's "
                            "slot keeps on the primary")
    run_commands: bool = Field(False, alias="runCommands", description="run a fence "
                               "command for real (tests of hooks); default: pretend")


class FakeDatabase(Database):
    Options = FakeDatabaseOptions

    def __init__(self, options: FakeDatabaseOptions, *, secrets: Any = None):
        self.options = options

    # --- state -------------------------------------------------------------------------------

    def _nodes(self, st: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if "nodes" not in st:
            o = self.options
            node: dict[str, Any] = {"running": True, "reachable": True, "readOnly": False,
                                    "fenced": None, "timeline": 1,
                                    "rewindable": True, "rewindMb": 16, "sizeMb": 64,
                                    "walBytes": 0,
                                    "startsRewound": True, "streamsRewound": True,
                                    "rewound": False, "slot": None}
            st["nodes"] = {
                o.primary: {**node, "rows": [], "slots": {}, "recovery": False,
                            "lsn": START_LSN + o.lag_bytes,
                            "streaming": False, "lagSeconds": 0.0, "upstream": None,
                            "lagBytes": 0},
                o.standby: {**node, "rows": [], "slots": {}, "recovery": True, "lsn": START_LSN,
                            "streaming": o.streaming, "lagSeconds": o.lag_seconds,
                            "upstream": o.primary, "lagBytes": o.lag_bytes},
            }
        nodes: dict[str, dict[str, Any]] = st["nodes"]
        for n in nodes.values():  # the WAL streamed since the last call
            up = nodes.get(n["upstream"] or "")
            if up is None or not (n["recovery"] and n["streaming"] and n["running"]
                                  and n["reachable"] and up["running"] and up["reachable"]
                                  and not n["lagBytes"] and n["timeline"] == up["timeline"]
                                  and up["rows"][:len(n["rows"])] == n["rows"]):
                continue
            n["rows"], n["lsn"] = list(up["rows"]), max(n["lsn"], up["lsn"])
        return nodes

    def _node(self, st: dict[str, Any], node: Node, *, running: bool = True
              ) -> dict[str, Any]:
        nodes = self._nodes(st)
        if node.host not in nodes:
            raise PermanentError(f"memory database {self.options.key}: no node "
                                 f"{node.host!r} (have: {', '.join(sorted(nodes))})")
        found = nodes[node.host]
        if not found["reachable"] or (running and not found["running"]):
            raise Unreachable(f"{node.describe()} does not answer"
                              + ("" if found["reachable"] else " (its host is cut off)"))
        return found

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node as the fake holds it (for tests and the simulation)."""
        with _state(self.options, "database") as st:
            return {name: dict(n) for name, n in self._nodes(st).items()}

    def set_node(self, name: str, **fields: Any) -> None:
        """Inject a fault (outside any step): `running`, `reachable`, `streaming`,
        `lagSeconds`, `lsn`..."""
        with _state(self.options, "database") as st:
            self._nodes(st)[name].update(fields)

    def commit(self, name: str) -> int | None:
        """A client commits a row on node `name` (not a controller's write: no fence);
        its id, or None when the node does not take writes (stopped, read-only, a
        standby)."""
        with _state(self.options, "database") as st:
            n = self._nodes(st)[name]
            if not n["running"] or n["recovery"] or n["readOnly"]:
                return None
            row: int = st.get("rowSeq", 0) + 1
            st["rowSeq"] = row
            n["rows"].append(row)
            n["lsn"] += 0x100
            n["walBytes"] += 0x100
            st.setdefault("commits", []).append({"row": row, "node": name,
                                                 "timeline": n["timeline"]})
        return row

    def commits(self) -> list[dict[str, Any]]:
        """Every row a client committed: its node and that node's timeline then."""
        with _state(self.options, "database") as st:
            return list(st.get("commits", []))

    def promotions(self) -> list[dict[str, Any]]:
        with _state(self.options, "database") as st:
            return list(st.get("promoted", []))

    def state(self, node: Node) -> NodeState:
        with _state(self.options, "database") as st:
            n = self._node(st, node)
            return NodeState(in_recovery=n["recovery"], timeline=n["timeline"], lsn=n["lsn"],
                             streaming=n["recovery"] and n["streaming"],
                             lag_seconds=n["lagSeconds"] if n["recovery"] else 0.0,
                             read_only=n["readOnly"])

    # --- writes ------------------------------------------------------------------------------

    def fence(self, node: Node, *, method: FenceMethod,
              command: list[str] | None = None) -> Evidence:
        if method is FenceMethod.COMMAND:
            if not command:
                raise PermanentError("a command fence needs the command (fence.command)")
            if self.options.run_commands:
                LocalHost().run(command, timeout=60)
        with _state(self.options, "database") as st:
            if method is FenceMethod.COMMAND:  # out of band (power, network): no answer needed
                n = self._nodes(st)[node.host]
            else:
                n = self._node(st, node, running=method is FenceMethod.SQL)
            # what the fence can read of the node: nothing, for a command out of band
            seen = {} if method is FenceMethod.COMMAND else {"lastLsn": lsn_text(n["lsn"])}
            if n["fenced"] is not None or (method is not FenceMethod.SQL
                                           and not n["running"]):
                return {"method": method.value, "already": True, **seen}
            token, holder = _fenced(st, f"fence of {node.describe()} refused")
            if method is FenceMethod.SQL:
                n["readOnly"] = True
            else:
                n["running"] = False
            n["fenced"] = method.value
            st.setdefault("fences", []).append({"node": node.host, "method": method.value,
                                                "token": token, "holder": holder})
        return {"method": method.value, "already": False, **seen}

    def fence_by_person(self, name: str) -> None:
        """A person stops the node by hand (the simulation's person, before saying done)."""
        with _state(self.options, "database") as st:
            n = self._nodes(st)[name]
            n["running"], n["fenced"] = False, n["fenced"] or "person"

    def promote(self, node: Node, *, timeout: float,
                queries: Sequence[str] = ()) -> Promoted:
        with _state(self.options, "database") as st:
            n = self._node(st, node)
            if not n["recovery"]:
                raise NotInRecovery(f"{node.describe()} is not in recovery: there is "
                                    "nothing to promote")
            token, holder = _fenced(st, f"promotion of {node.describe()} refused")
            n.update(recovery=False, streaming=False, lagSeconds=0.0, upstream=None,
                     timeline=n["timeline"] + 1)
            st.setdefault("promoted", []).append({"node": node.host, "token": token,
                                                  "holder": holder})
        return Promoted(self.state(node), ["1" for _ in queries])

    def stop(self, node: Node) -> Evidence:
        with _state(self.options, "database") as st:
            n = self._node(st, node, running=False)
            seen = {"lastLsn": lsn_text(n["lsn"])}
            if not n["recovery"]:  # a primary's WAL ends there
                seen["walEnd"] = seen["lastLsn"]
            if not n["running"]:
                return {"already": True, **seen}
            _fenced(st, f"stop of {node.describe()} refused")
            n["running"] = False
        return {"already": False, **seen}

    def unfence(self, node: Node, *, method: FenceMethod) -> Evidence:
        if method is FenceMethod.COMMAND:
            raise PermanentError(f"a {method.value} fence is undone by a person, not here")
        with _state(self.options, "database") as st:
            n = self._node(st, node, running=method is FenceMethod.SQL)
            if n["running"] and not n["readOnly"]:
                return {"already": True}
            _fenced(st, f"unfence of {node.describe()} refused")
            n.update(running=True, readOnly=False, fenced=None)
        return {"already": False}

    def _rebuilt(self, node: Node, source: Node, what: str, *, rewind: bool = False
                 ) -> bool:
        """Give the stopped `node` the source's data and timeline (a rewind or a base
        backup); whether that changed them."""
        with _state(self.options, "database") as st:
            n, src = self._node(st, node, running=False), self._node(st, source)
            if n["running"]:
                raise PermanentError(f"{node.describe()} is running: stop it before {what}")
            if rewind and not n["rewindable"]:
                raise RewindFailed(f"pg_rewind of {node.describe()} exited 1: could not "
                                   "find previous WAL record (injected)")
            changed = (n["rows"], n["timeline"]) != (src["rows"], src["timeline"])
            _fenced(st, f"{what} of {node.describe()} refused")
            n.update(rows=list(src["rows"]), lsn=src["lsn"] - n["lagBytes"],
                     timeline=src["timeline"], rewound=rewind and changed)
        return changed

    def rewind_size(self, node: Node, *, source: Node) -> RewindSize:
        with _state(self.options, "database") as st:
            n, src = self._node(st, node, running=False), self._node(st, source)
            if n["running"]:
                raise PermanentError(f"{node.describe()} is running: stop it before "
                                     "rewinding it")
            if not n["rewindable"]:
                raise RewindFailed(f"pg_rewind of {node.describe()} exited 1: could not "
                                   "find previous WAL record (injected)")
            if (n["rows"], n["timeline"]) == (src["rows"], src["timeline"]):
                return RewindSize(0, 0)
            return RewindSize(n["rewindMb"], src["sizeMb"])

    def size(self, node: Node) -> NodeSize:
        with _state(self.options, "database") as st:
            n = self._node(st, node)
            return NodeSize(lsn=n["lsn"], wal_bytes=n["walBytes"],
                            databases_bytes=n["sizeMb"] << 20)

    def rewind(self, node: Node, *, source: Node) -> Evidence:
        return {"rewound": self._rebuilt(node, source, "rewinding it", rewind=True)}

    def basebackup(self, node: Node, *, source: Node, aside: str) -> Evidence:
        self._rebuilt(node, source, "replacing its data")
        with _state(self.options, "database") as st:
            self._nodes(st)[node.host]["slots"] = {}  # a base backup copies no slot
        return {"aside": f"{node.host}.{aside}"}

    def follow(self, node: Node, *, source: Node, slot: str | None = None) -> Evidence:
        with _state(self.options, "database") as st:
            n = self._node(st, node, running=False)
            if n["running"] and n["recovery"]:
                return {"already": True}
            if n["running"]:
                raise PermanentError(f"{node.describe()} is running: stop it before "
                                     "starting it as a standby")
            _fenced(st, f"start of {node.describe()} refused")
            slotted = slot is None or slot in self._nodes(st)[source.host]["slots"]
            starts = n["startsRewound"] or not n["rewound"]
            streams = n["streamsRewound"] or not n["rewound"]
            n.update(running=True, recovery=True, streaming=slotted and starts and streams,
                     upstream=source.host, slot=slot, readOnly=False, fenced=None,
                     lagSeconds=0.0)
            if not starts:
                raise StartFailed(f"{node.describe()}: pg_ctl start failed or did not start "
                                  "within 60 s: requested "
                                  "WAL segment has already been removed (injected)")
        return {"already": False}

    def create_slot(self, node: Node, name: str) -> Evidence:
        with _state(self.options, "database") as st:
            n = self._node(st, node)
            if name in n["slots"]:
                return {"slot": name, "already": True}
            _fenced(st, f"creating slot {name} on {node.describe()} refused")
            n["slots"][name] = n["lsn"]
        return {"slot": name, "already": False}

    def drop_slot(self, node: Node, name: str) -> Evidence:
        with _state(self.options, "database") as st:
            n = self._node(st, node)
            if name not in n["slots"]:
                return {"slot": name, "already": True}
            _fenced(st, f"dropping slot {name} on {node.describe()} refused")
            del n["slots"][name]
        return {"slot": name, "already": False}

    # --- reads -------------------------------------------------------------------------------

    def check_fence(self, node: Node, *, method: FenceMethod,
                    command: list[str] | None = None, dry_run: bool = False) -> str:
        if method is FenceMethod.COMMAND:
            if not command:
                raise PermanentError("a command fence needs the command (fence.command)")
            if self.options.run_commands and dry_run:
                LocalHost().run([*command, "--dry-run"], timeout=60)
            return f"fence command {command[0]} " + ("answers --dry-run" if dry_run
                                                     else "is configured")
        with _state(self.options, "database") as st:
            self._node(st, node, running=method is FenceMethod.SQL)
        return f"{node.describe()} reachable for a {method.value} fence"

    def query(self, node: Node, sql: str) -> str:
        with _state(self.options, "database") as st:
            self._node(st, node)
        return "1"

    def slots(self, node: Node) -> list[Slot]:
        with _state(self.options, "database") as st:
            n = self._node(st, node)
            users = {s["slot"] for s in self._nodes(st).values()
                     if s["upstream"] == node.host and s["running"] and s["recovery"]
                     and s["streaming"]}
        made = [Slot(name, name in users, max(0, n["lsn"] - kept))
                for name, kept in sorted(n["slots"].items())]
        if n["recovery"]:
            return made
        return [Slot(self.options.standby, self.options.streaming, self.options.slot_bytes),
                *made]
