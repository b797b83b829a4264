"""Restore beside the target, then swap: the data directory a restore replaces is never
destroyed before the new one is proven.

Owns the layout of a restore on the database host and the shell it runs to move data
directories (`node` builds its scripts around these functions). Why each rule:

- **Beside the target**: the data arrives in `<path>.restoring`, a sibling of the target on
  the same filesystem, so the swap is a rename (instant, nothing copied) and the target
  is not touched while the stream runs: a payload damaged since its verification, a stream
  cut mid-way, a killed controller or a cancelled step leave the old data as it was. A
  target that is a mount point is refused (a rename cannot move it).
- **Swap before start, undo on failure**: once the files are proven (the stream
  authenticated, `pg_verifybackup` passed), the target is renamed to `<path>.replaced`
  and `<path>.restoring` to the target, and PostgreSQL is started there. Starting in the
  side directory and renaming afterwards would cost a second start (a shutdown
  checkpoint and a start) and leave the recovery settings naming a path that no longer
  exists; starting at the target means a failed start, promotion or validation, or a
  cancel, must be undone: the server is stopped by its PID, the restored directory moved
  back out, the replaced one renamed back, so the target is exactly as it was.
- **A marker says what is in flight**: `<path>.restore-state` (key=value lines: state,
  backup id, run, inode of the restored directory) is written before any directory is
  made and updated before every rename. `receiving`: only `<path>.restoring` is ours;
  `swapped`: the target may be ours (its inode says) and `<path>.replaced` holds what was
  there; `done`: the restore finished (kept afterwards: it names the backup the directory
  holds). A resumed restore (the controller died, the step is retried) reads it: work in
  flight is undone (and only that), a running node with `done`/`swapped` for the same
  backup is validated and, if it passes, reported as already restored. Directories
  named like ours without an in-flight marker are someone else's: refused, never removed.
- **Replaced data goes only after success, and in the background**: `<path>.replaced`
  is removed once the restored node runs at the target and passed validation, after the
  marker says `done`; the caller asked for it to be replaced (`overwrite`). Removing a
  cluster costs as long as a small restore (1 s for a fresh one here), and the node is
  already serving, so the removal runs detached (`setsid`) and the restore returns:
  `done` with `<path>.replaced` still there is the named state "replaced data being
  removed". A removal that dies (a crash, a reboot) leaves exactly that, and the next
  restore onto the target finishes it before anything else.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """What the marker says a restore onto the target reached."""

    RECEIVING = "receiving"
    SWAPPED = "swapped"
    DONE = "done"


class AlreadyThere(Exception):
    """A node of ours for this backup is running at the target (state `done`: a restore
    finished but was not recorded; `swapped`: one died between start and commit)."""

    def __init__(self, state: State):
        self.state = state
        super().__init__(f"a restore of this backup is already at the target ({state.value})")


@dataclass(frozen=True)
class Layout:
    """Where a restore onto `path` keeps its work, and who it is (`backup`, `run`)."""

    path: str
    backup: str = ""
    run: str = ""

    @property
    def side(self) -> str:
        return f"{self.path}.restoring"

    @property
    def aside(self) -> str:
        return f"{self.path}.replaced"

    @property
    def marker(self) -> str:
        return f"{self.path}.restore-state"

    def variables(self) -> str:
        """The shell variables the functions below use (values quoted)."""
        q = shlex.quote
        run = " ".join(self.run.split())  # one line in the marker
        return (f"P={q(self.path)}; S={q(self.side)}; A={q(self.aside)}; M={q(self.marker)}; "
                f"B={q(self.backup)}; R={q(run)}")


# the marker's fields, the inode of a directory, and `undo`: put back what the marker says
# is in flight (a `done` restore is never undone). With `swapped`, the target is ours only
# if its inode is the one recorded; the replaced directory goes back before anything of
# ours is deleted.
FUNCTIONS = r"""mfield() { sed -n "s/^$1=//p" "$M" 2>/dev/null | head -1; }
inode() { stat -c %i -- "$1" 2>/dev/null; }
marker() {
  printf 'state=%s\nbackup=%s\nrun=%s\ninode=%s\n' "$1" "$B" "$R" "$2" >"$M.new" &&
    mv -f -- "$M.new" "$M"
}
undo() {
  st=$(mfield state); ino=$(mfield inode)
  case "$st" in
    receiving) rm -rf -- "$S" || return 1;;
    swapped)
      if [ -n "$ino" ] && [ "$(inode "$P")" = "$ino" ]; then mv -T -- "$P" "$S" || return 1; fi
      if [ ! -e "$P" ] && [ -e "$A" ]; then mv -T -- "$A" "$P" || return 1; fi
      rm -rf -- "$S" || return 1;;
    *) return 0;;
  esac
  rm -f -- "$M"
}
"""

# decides, before anything is written, what an earlier attempt left: a running node of ours
# for this backup (`ours=STATE`, the caller validates it), someone's running server
# (`running=PID`), work in flight (undone: `cleared=STATE BACKUP`), leftovers of a finished
# restore (removed), directories in our names that are not ours (`inway=PATH`)
INSPECT = r"""pid=$(head -1 "$P/postmaster.pid" 2>/dev/null)
case "$pid" in ''|*[!0-9]*) ;; *) if kill -0 "$pid" 2>/dev/null; then
  st=$(mfield state)
  if [ "$(mfield backup)" = "$B" ] && [ -n "$(mfield inode)" ] &&
     [ "$(inode "$P")" = "$(mfield inode)" ] && { [ "$st" = swapped ] || [ "$st" = done ]; }
  then echo "ours=$st"; fi
  echo "running=$pid"; exit 0; fi ;; esac
st=$(mfield state)
case "$st" in receiving|swapped)
  echo "cleared=$st $(mfield backup)"; undo || { echo "undo=failed"; exit 1; };; esac
if [ "$st" = done ] && [ -e "$A" ]; then rm -rf -- "$A" || exit 1; fi
for d in "$S" "$A"; do if [ -e "$d" ] || [ -L "$d" ]; then echo "inway=$d"; exit 0; fi; done
if [ -e "$P" ] && [ "$(stat -c %d -- "$P")" != "$(stat -c %d -- "${P%/*}/")" ]; then
  echo "mountpoint=yes"; exit 0; fi
"""

# the swap, once the restored files are proven: marker first, then the two renames
SWAP = r"""ino=$(inode "$S"); [ -n "$ino" ] || fail swap
marker swapped "$ino" || fail swap
if [ -e "$P" ]; then mv -T -- "$P" "$A" || fail swap; echo "@@aside $A"; fi
mv -T -- "$S" "$P" || fail swap
"""

# after validation: the marker says done, then the replaced directory goes, in the
# background (its own session, no descriptor of this one: the restore does not wait)
COMMIT = r"""marker done "$(inode "$P")" || fail commit
if [ -e "$A" ]; then
  if setsid -f rm -rf -- "$A" </dev/null >/dev/null 2>&1; then echo "@@removing $A"
  else echo "@@kept $A"; fi
fi
"""


def undo_script(layout: Layout) -> str:
    """Put the target back as the marker says it was (nothing in flight: nothing done)."""
    return f"cd / || exit 1\n{layout.variables()}\n{FUNCTIONS}undo\n"
