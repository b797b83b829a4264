"""The journal's single-actor leases: which controller may act on a plan, with a fencing
token that only grows.

A lease is one row (`leases`: name, holder, token, expiry) of the journal file, so every
controller sharing a journal agrees on its holder without a server. Why each rule:

- **Renewing costs nothing while there is time to spare**: a holder whose lease has more
  than half its ttl left reads it and writes nothing, and a standby facing another's
  unexpired lease costs one read, so a thousand quiet plans write no lease per tick.
- **A renewal or a plan's first lease is not waited on the disk for**
  (`JournalFile._tx(durable=False)`): a crash that loses a renewal lets the lease expire
  sooner; a lost first lease is taken again with a token above the clock; and a step
  taken under either is written durably, which writes the lease with it. A lease taken
  from another holder is durable before it is used.
- **Tokens only grow** (`fencing.next_token` of the last one, and the row is kept when a
  lease is released), so a fenced target can refuse a deposed holder's late write.
"""

from __future__ import annotations

from typing import Any

from controller.fencing import next_token
from controller.journal_file import JournalFile


class Leases(JournalFile):
    """The lease rows of a journal file (`controller.journal.Journal` inherits them)."""

    def acquire_lease(self, name: str, holder: str, *, ttl: float, now: float) -> int | None:
        """Take or renew the lease; returns the fencing token, or None if someone else holds
        it. A new holder's token is `fencing.next_token` of the last one: it only grows."""
        rows = self._all("SELECT holder, token, expires_at FROM leases WHERE name=?", (name,))
        if rows and rows[0]["holder"] == holder and rows[0]["expires_at"] - now > ttl / 2:
            return int(rows[0]["token"])  # ours with time to spare: no write, no transaction
        if rows and rows[0]["holder"] not in (holder, "") and rows[0]["expires_at"] > now:
            return None  # another's, unexpired: a standby's cycle costs one read
        quick = not rows or rows[0]["holder"] == holder  # a first token, or a renewal
        with self._tx(durable=not quick) as db:
            self._changes()  # leases only
            row = db.execute("SELECT * FROM leases WHERE name=?", (name,)).fetchone()
            if quick and row is not None and row["holder"] != holder:
                return None  # changed hands since read: taken (durably) on the next try
            if row is None:
                token = next_token(0, now)
                db.execute("INSERT INTO leases (name, holder, token, expires_at) "
                           "VALUES (?,?,?,?)", (name, holder, token, now + ttl))
                return token
            if row["holder"] != holder and row["expires_at"] > now:
                return None
            if row["holder"] == holder and row["expires_at"] - now > ttl / 2:
                return int(row["token"])  # ours with time to spare: renew later, no write
            token = row["token"] if row["holder"] == holder else next_token(row["token"], now)
            db.execute("UPDATE leases SET holder=?, token=?, expires_at=? WHERE name=?",
                       (holder, token, now + ttl, name))
            return int(token)

    def lease(self, name: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM leases WHERE name=?", (name,))
        return dict(rows[0]) if rows else None

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up; the row (and its token) stays, so tokens keep growing."""
        with self._tx() as db:
            db.execute("UPDATE leases SET holder='', expires_at=0 WHERE name=? AND holder=?",
                       (name, holder))
