"""Backup benchmarks: figures and ratios against a baseline run the same way, not timers.

    .venv/bin/python tests/benchmarks/bench_backups.py                # 114 MB payload
    .venv/bin/python tests/benchmarks/bench_backups.py --size 114 --size 1024   # and 1 GB
    BENCH_BACKUP_SIZES=114,1024 .venv/bin/python tests/benchmarks/bench_backups.py  # same
    .venv/bin/python tests/benchmarks/bench_backups.py --where local --kinds basebackup
    .venv/bin/python -m pytest tests/benchmarks/bench_backups.py -s   # one small size
    .venv/bin/python tests/benchmarks/bench_backups.py --size 1024 --hold-free-pages 10000

Each size (MB of the base backup's plain tar: rows are added to the source table until
it is about that big) gets its own section, and a summary at the end says, per size,
which goal is met and which is not.

(a) verification throughput: the catalog's checksum pass over a stored (encrypted)
    payload versus `sha256sum` of the same file, best of N; and the decrypt +
    authenticate pass (every GCM tag checked) versus the same `sha256sum`.
    Goal: checksum pass >= 0.9x sha256sum.
(b) restore wall time versus the bare tools run by hand on the same backup, locally and
    over a real sshd on loopback (the restorer through fabric with the host key pinned,
    by hand through the OpenSSH client; both pay one connection). The restorer takes its
    real path: the target holds an old cluster (`overwrite: true`), the backup is
    restored beside it, swapped in, started, validated, and the old one removed in the
    background (the restore returns; the run waits for the removal outside its timing);
    by hand restores into an empty directory:
    - basebackup: BaseBackupRestorer on a backup the real verifier verified first
      (filesystem store: decrypt + authenticate + the stored SHA-256 as cataloged, tar
      -x (no pg_verifybackup: the verification ran it, checksums included, on these very
      bytes), configure, swap, start, promote, validation query, commit) versus
      by hand `tar -x` of the same bytes unencrypted + archive_mode=off + `pg_ctl start
      -w` + polling pg_is_in_recovery() + the same query, in one shell session; and the
      same with pg_verifybackup ("by hand+checks");
    - pgBackRest: PgBackRestRestorer (a continuous set: to the end of the archive) versus
      by hand `pgbackrest restore --type=default --archive-mode=off` + the same start,
      poll and query. Goal <= 1.1x (the ratio of the bests printed; the medians are
      printed beside it: on a noisy host the bests of N runs of one command differ by
      10-15 %, so run with --repeat 10 before trusting a ratio near the goal). On a VM
      that hands freed memory back to its hypervisor at once (the first line printed says
      so), writing 1 GB costs 0.3 s or 2.5 s depending on which memory the kernel hands
      out: `--hold-free-pages 10000` keeps what a run frees for the next while the
      benchmark runs (`page_reporting.py`), both sides alike.
(c) cancel latency: a basebackup restore cancelled (as a step's timeout cancels it, from
    another thread) while the restored PostgreSQL runs a slow validation query, locally
    and over SSH: the seconds from the cancel to the restore raising, having stopped the
    server and put the target back (tests/contract/backups/test_restore_cancel.py
    asserts that it does; the figure is here, so a busy host fails no test).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller import fencing  # noqa: E402
from controller.backups.catalog import sha256_stream  # noqa: E402
from controller.backups.crypto import DecryptingReader  # noqa: E402
from controller.backups.filesystem import FilesystemBackupStore  # noqa: E402
from controller.backups.restore import BaseBackupRestorer, PgBackRestRestorer  # noqa: E402
from controller.backups.take import register_pgbackrest, take_basebackup  # noqa: E402
from controller.backups.verify import CatalogVerifier  # noqa: E402
from controller.drill.servers.base import free_port  # noqa: E402
from controller.drill.servers.postgres import (  # noqa: E402
    PG_BIN,
    PostgresServer,
    archive_to_pgbackrest,
    as_user,
    give_to,
)
from controller.model import Backup, Target  # noqa: E402
from controller.secrets import Secrets  # noqa: E402
from tests.benchmarks import page_reporting  # noqa: E402


def best(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@dataclass(frozen=True)
class Goal:
    """One goal's figure: `ratio` against its baseline, met when on the right side of
    `limit` (`at_most`: a time ratio; otherwise a throughput ratio)."""

    name: str
    ratio: float
    limit: float
    at_most: bool = True

    @property
    def met(self) -> bool:
        return self.ratio <= self.limit if self.at_most else self.ratio >= self.limit

    def __str__(self) -> str:
        side = "<=" if self.at_most else ">="
        return (f"{self.name:38s} {self.ratio:5.2f}x  (goal {side} {self.limit}x)  "
                f"{'met' if self.met else 'NOT met'}")


def verification(base: Path, mb: int, repeat: int) -> list[Goal]:
    os.environ["BENCH_KEY"] = base64.b64encode(os.urandom(32)).decode()
    store = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
        {"path": str(base / "catalog"), "encryptionKey": {"fromEnv": "BENCH_KEY"}}))
    src = base / "src"
    src.mkdir(parents=True)
    with (src / "data").open("wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    bk = store.add_directory(src, dataset="bench", kind="daily", taken_at=time.time(),
                             actor="bench")
    key = bk.meta["objects"][0]["key"]
    path = base / "catalog" / key
    size = path.stat().st_size

    def ours() -> None:
        with store.open_raw(key) as fh:
            assert sha256_stream(fh)[0] == bk.meta["objects"][0]["sha256"]

    def theirs() -> None:
        subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)

    def decrypt() -> None:
        with store.open_raw(key) as fh:
            reader = DecryptingReader(fh, base64.b64decode(os.environ["BENCH_KEY"]))
            while reader.read(1 << 20):
                pass

    theirs()  # warm the page cache
    t_sum, t_ours, t_dec = best(theirs, repeat), best(ours, repeat), best(decrypt, repeat)
    mbs = size / 1e6
    print(f"(a) verification over {mbs:.0f} MB stored payload (best of {repeat}):")
    print(f"    sha256sum                {mbs / t_sum:8.0f} MB/s")
    print(f"    catalog checksum pass    {mbs / t_ours:8.0f} MB/s   ratio {t_sum / t_ours:.2f}x")
    print(f"    decrypt+authenticate     {mbs / t_dec:8.0f} MB/s   ratio {t_sum / t_dec:.2f}x")
    return [Goal("checksum pass vs sha256sum", t_sum / t_ours, 0.9, at_most=False)]


def _hand_script(data: Path, sock: Path, port: int, fetch: list[str],
                 queries: list[str], *, verify: bool) -> str:
    """What a person types on the database host: the bare tools, in one shell session.

    `fetch` puts the files in place (`tar -x` of the backup's plain tar from stdin, or
    `pgbackrest restore`), then port/socket/archive_mode=off are appended, `pg_ctl start
    -w`, pg_is_in_recovery() polled every 50 ms, and the queries run. With `verify`,
    `pg_verifybackup` runs before the start. Each part is marked on stdout with the
    host's clock (`_hand_phases`), as the restorer's phases are.
    """
    q, j = shlex.quote, shlex.join
    psql = [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-h", str(sock), "-p", str(port),
            "-U", "postgres", "-d", "postgres", "-c"]
    conf = f"archive_mode = off\nport = {port}\nunix_socket_directories = '{sock}'\n"
    lines = ["set -e", "cd /", 'mark() { echo "@@mark $1 $(date +%s.%N)"; }',
             "mark fetch", j(as_user(fetch))]
    if verify:
        lines += ["mark verify", j(as_user([str(PG_BIN / "pg_verifybackup"), "-q",
                                            str(data)]))]
    append = as_user(["sh", "-c", f"cat >> {q(str(data))}/postgresql.auto.conf"])
    lines += [
        "mark start",
        f"printf '%s' {q(conf)} | {j(append)}",
        j(as_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", f"{data}/hand.log", "-w",
                   "start"])) + " >/dev/null",
        "mark promote",
        f'until [ "$({j(as_user([*psql, "SELECT pg_is_in_recovery()"]))})" = f ]; '
        "do sleep 0.05; done",
        "mark validate",
        *(j(as_user([*psql, sql])) + " >/dev/null" for sql in queries),
        "mark done",
    ]
    return "\n".join(lines) + "\n"


class Ssh:
    """A real sshd on loopback; `argv` runs a command with the OpenSSH client (by hand)."""

    def __init__(self, base: Path):
        from controller.drill.servers.sshd import SshServer

        self.server = SshServer(base / "sshd").start()
        self.key, self.known = base / "client_key", base / "known_hosts"
        self.key.write_text(self.server.client_key.read_text())
        self.key.chmod(0o600)
        self.known.write_text(self.server.known_hosts)

    def argv(self, command: str) -> list[str]:
        return ["ssh", "-p", str(self.server.port), "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known}", "-o", "StrictHostKeyChecking=yes",
                f"{self.server.user}@127.0.0.1", command]

    def restorer_options(self) -> dict[str, Any]:
        return {"ssh": {"user": self.server.user, "port": self.server.port,
                        "privateKey": {"fromFile": str(self.key)},
                        "knownHosts": {"fromFile": str(self.known)}}}


SLOW_QUERY = {"name": "slow check", "sql": "SELECT 1 FROM pg_sleep(120)", "expect": "1"}


def _cancel_latency(restorer: Any, backup: Backup, into: Target) -> float:
    """Seconds from a cancel, sent once the restored server runs `SLOW_QUERY`, to the
    restore raising `fencing.Cancelled`."""
    psql = as_user([str(PG_BIN / "psql"), "-X", "-A", "-t", "-h", into.options["socketDir"],
                    "-p", str(into.options["port"]), "-U", "postgres", "-c",
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                    "'SELECT 1 FROM pg_sleep%' AND pid <> pg_backend_pid()"])
    fence, at = fencing.Fence(1, "bench"), []

    def cancel() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and subprocess.run(
                psql, capture_output=True, text=True, check=False).stdout.strip() != "1":
            time.sleep(0.02)
        at.append(time.perf_counter())
        fence.cancel("bench: the step timed out")

    thread = threading.Thread(target=cancel, daemon=True)
    thread.start()
    try:
        with fencing.scope(fence):
            restorer.restore(backup=backup, into=into)
    except fencing.Cancelled:
        return time.perf_counter() - at[0]
    finally:
        thread.join(5)
    raise RuntimeError("the restore finished before it was cancelled")


def restores(base: Path, mb: int, repeat: int, where: list[str], kinds: list[str],
             cancel: bool) -> list[Goal]:
    give_to(base, mode=0o755)
    source = PostgresServer(base / "source")
    conf = archive_to_pgbackrest(source, base, retention=99)
    source.init().start()
    try:
        rows = _fill(source, mb)
        os.environ["BENCH_KEY"] = base64.b64encode(os.urandom(32)).decode()
        store = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
            {"path": str(base / "catalog"), "encryptionKey": {"fromEnv": "BENCH_KEY"}}))
        bk = take_basebackup(store, dataset="orders", kind="daily", actor="bench",
                             host=str(source.sock), port=source.port)
        subprocess.run(as_user(["pgbackrest", f"--config={conf}", "--stanza=main",
                                "stanza-create"]), check=True, capture_output=True)
        pbk = register_pgbackrest(store, dataset="orders", kind="continuous", actor="bench",
                                  config=str(conf), stanza="main")
    finally:
        source.stop()
    plain_tar = base / "plain.tar"  # the same bytes the restorer decrypts, unencrypted
    with store.open_payload(bk) as reader, plain_tar.open("wb") as fh:
        shutil.copyfileobj(reader, fh, 1 << 20)
    plain_tar.chmod(0o644)
    sql = "SELECT count(*) FROM orders"
    validation = [{"name": "rows", "sql": sql, "expect": str(rows)}]
    store_spec = {"kind": "filesystem", "options": {
        "path": str(base / "catalog"), "encryptionKey": {"fromEnv": "BENCH_KEY"}}}
    verified = CatalogVerifier(CatalogVerifier.Options.model_validate({
        "store": store_spec, "scratch": str(base), "validation": validation}),
        secrets=Secrets(), store=store).verify(backup=bk)
    assert verified["passed"], verified["summary"]
    [bk_ok] = [b for b in store.list(dataset="orders") if b.id == bk.id]
    pbk_ok = _verified(pbk)
    ssh = Ssh(base)
    counter = iter(range(10_000))

    def place() -> tuple[Path, Path]:
        d = base / f"r{next(counter)}"
        give_to(d, mode=0o755)
        give_to(d / "sock", mode=0o755)
        return d / "data", d / "sock"

    old = PostgresServer(base / "old")  # the cluster a restore with overwrite replaces
    old.init()

    def restorer(kind: str, remote: bool) -> Any:
        extra = ssh.restorer_options() if remote else {}
        if kind == "basebackup":
            return BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
                {"store": store_spec, **extra}), secrets=Secrets(), store=store)
        return PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
            {"config": str(conf), "stanza": "main", **extra}), secrets=Secrets())

    def target(data: Path, sock: Path, remote: bool, queries: list[Any],
               **extra: Any) -> Target:
        return Target(host="127.0.0.1" if remote else None, path=str(data), options={
            "port": free_port(), "socketDir": str(sock), "validation": queries,
            **({"sshPort": ssh.server.port} if remote else {}), **extra})

    def ours(kind: str, remote: bool) -> tuple[float, dict[str, float]]:
        r, b = restorer(kind, remote), bk_ok if kind == "basebackup" else pbk_ok
        data, sock = place()
        subprocess.run(["cp", "-a", str(old.data), str(data)], check=True)
        into = target(data, sock, remote, validation, overwrite=True)
        os.sync()  # start from written-back pages, as the runs by hand do
        t = time.perf_counter()
        ev = r.restore(backup=b, into=into)
        took = time.perf_counter() - t
        assert ev["replaced"] == {"path": f"{data}.replaced",
                                  "removal": "in the background"}, ev["replaced"]
        while Path(f"{data}.replaced").exists():  # the background removal, untimed
            time.sleep(0.05)
        r.stop(into=into)
        shutil.rmtree(data.parent)
        return took, ev["phases"]

    def hand(kind: str, remote: bool, verify: bool) -> tuple[float, dict[str, float]]:
        data, sock = place()
        give_to(data)
        if kind == "basebackup":
            fetch = ["tar", "-x", "-f", "-", "-C", str(data)]
        else:
            fetch = ["pgbackrest", f"--config={conf}", "--stanza=main", f"--pg1-path={data}",
                     f"--set={pbk.meta['pgbackrest']['label']}", "--type=default",
                     "--archive-mode=off",
                     "--log-level-console=warn", "restore"]
        port = free_port()
        script = _hand_script(data, sock, port, fetch, [sql], verify=verify)
        argv = ssh.argv(shlex.join(["sh", "-c", script])) if remote else ["sh", "-c", script]
        with plain_tar.open("rb") as stdin:
            os.sync()  # the previous run's 100+ MB of dirty pages must not slow this one
            t = time.perf_counter()
            out = subprocess.run(argv, stdin=stdin if kind == "basebackup"
                                 else subprocess.DEVNULL, check=True, capture_output=True,
                                 text=True).stdout
            took = time.perf_counter() - t
        subprocess.run(as_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                                "stop"]), check=True, capture_output=True)
        shutil.rmtree(data.parent)
        return took, _hand_phases(out)

    print(f"(b) restore wall time, {rows} rows, plain size {bk.meta['plainSize'] / 1e6:.0f} MB "
          f"(best of {repeat}, runs interleaved, each after a sync). 'by hand' = the bare "
          "tools on the same backup in one shell session (remote: one `ssh` invocation, "
          "connect included, as "
          "is the restorer's); 'by hand+checks' adds pg_verifybackup (basebackup) - the "
          "restorer also decrypts and authenticates every chunk, and replaces an old "
          "cluster (restore beside it, swap, remove it after validation):")
    goals: list[Goal] = []
    try:
        for remote in (False, True):
            if ("ssh" if remote else "local") not in where:
                continue
            for kind in kinds:
                t_bare, t_checks, t_mine, phases, bare_phases = [], [], [], {}, {}
                for _ in range(repeat):
                    took, ph = hand(kind, remote, verify=False)
                    if not t_bare or took < min(t_bare):
                        bare_phases = ph
                    t_bare.append(took)
                    t_checks.append(hand(kind, remote, verify=kind == "basebackup")[0])
                    took, ph = ours(kind, remote)
                    if not t_mine or took < min(t_mine):
                        phases = ph
                    t_mine.append(took)
                bare, checks, mine = min(t_bare), min(t_checks), min(t_mine)
                at = "ssh  " if remote else "local"
                # by hand reads the plain tar; the restorer decrypts, authenticates and
                # hashes (the stored SHA-256) every byte on top: said in the label
                label = (f"restore {at.strip()} {kind} vs bare tools"
                         + (" (bare: no decrypt/SHA-256)" if kind == "basebackup" else ""))
                goal = Goal(label, mine / bare, 1.1)
                goals.append(goal)
                print(f"    {at} {kind:11s} by hand {bare:5.2f} s   by hand+checks "
                      f"{checks:5.2f} s   restorer {mine:5.2f} s   ratio {mine / bare:.2f}x "
                      f"(vs +checks {mine / checks:.2f}x; goal <= 1.1x "
                      f"{'met' if goal.met else 'NOT met'})")
                # the medians say how noisy the host was: a ratio of bests is only as
                # steady as the runs behind it
                print(f"          medians: by hand {statistics.median(t_bare):5.2f} s   "
                      f"restorer {statistics.median(t_mine):5.2f} s   ratio "
                      f"{statistics.median(t_mine) / statistics.median(t_bare):.2f}x")
                print(f"          phases {phases}")
                print(f"          by hand {bare_phases}")
        if not cancel:
            return goals
        print(f"(c) cancel latency (best and worst of {repeat}): a basebackup restore "
              "cancelled while the restored server runs a slow validation query; seconds "
              "until it raised, the server stopped and the target put back:")
        for remote in (False, True):
            if ("ssh" if remote else "local") not in where:
                continue
            took = []
            for _ in range(repeat):
                data, sock = place()
                into = target(data, sock, remote, [*validation, SLOW_QUERY])
                took.append(_cancel_latency(restorer("basebackup", remote), bk_ok, into))
                shutil.rmtree(data.parent)
            print(f"    {'ssh  ' if remote else 'local'} cancel -> raised  best "
                  f"{min(took):5.2f} s   worst {max(took):5.2f} s")
        return goals
    finally:
        ssh.server.stop()


def _hand_phases(out: str) -> dict[str, float]:
    """Seconds between the `@@mark NAME TIME` lines of a script by hand."""
    marks = [(line.split()[1], float(line.split()[2])) for line in out.splitlines()
             if line.startswith("@@mark ")]
    return {name: round(end - at, 3)
            for (name, at), (_, end) in itertools.pairwise(marks)}


# the source table's rows: a fresh cluster's base backup is about FIXED_MB of plain tar
# (catalog files, a WAL segment); each million rows of `orders` adds about MB_PER_MROW
FIXED_MB, MB_PER_MROW = 45, 34.5


def _fill(source: PostgresServer, mb: int) -> int:
    """Fill `orders` so that the base backup's plain tar is about `mb` MB; the rows."""
    rows = max(20_000, int((mb - FIXED_MB) / MB_PER_MROW * 1e6))
    source.psql(f"CREATE TABLE orders AS SELECT g AS id, g % 97 AS amount "
                f"FROM generate_series(1, {rows}) g")
    return rows


def _verified(b: Backup) -> Backup:
    from dataclasses import replace

    return replace(b, verified=True, verification="bench")


def run(sizes: list[int], repeat: int | None = None, *, where: tuple[str, ...] = (
        "local", "ssh"), kinds: tuple[str, ...] = ("basebackup", "pgbackrest"),
        verify: bool = True, cancel: bool = True, hold_free_pages: int | None = None
        ) -> dict[int, list[Goal]]:
    """Every part at each size (MB of plain payload); the goals met or not, per size."""
    if not (PG_BIN / "postgres").exists():
        raise SystemExit(f"{PG_BIN}/postgres missing: apt-get install postgresql")
    with page_reporting.held(hold_free_pages) as said:
        print(said)
        results = _run(sizes, repeat, where, kinds, verify, cancel)
    print("=== goals ===")
    for mb, goals in results.items():
        for goal in goals:
            print(f"    {mb:5d} MB  {goal}")
    return results


def _run(sizes: list[int], repeat: int | None, where: tuple[str, ...],
         kinds: tuple[str, ...], verify: bool, cancel: bool) -> dict[int, list[Goal]]:
    results: dict[int, list[Goal]] = {}
    for mb in sizes:
        base = Path(tempfile.mkdtemp(prefix="bench-backups-"))
        base.chmod(0o755)
        print(f"=== {mb} MB payload ===")
        try:
            goals = verification(base / "v", mb, 3) if verify else []
            goals += restores(base / "r", mb, repeat or (2 if mb >= 100 else 1),
                              list(where), list(kinds), cancel)
            results[mb] = goals
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return results


def test_bench_backups() -> None:
    run([50])


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, action="append", metavar="MB", help="plain "
                        "payload size in MB, repeatable (default: $BENCH_BACKUP_SIZES, "
                        "comma-separated, or 114); 1024 adds the 1 GB figures")
    parser.add_argument("--repeat", type=int, help="runs per figure, best kept (default 2; "
                        "1 below 100 MB)")
    parser.add_argument("--where", default="local,ssh", help="local, ssh or both")
    parser.add_argument("--kinds", default="basebackup,pgbackrest",
                        help="basebackup, pgbackrest or both")
    parser.add_argument("--no-verification", action="store_true", help="skip (a)")
    parser.add_argument("--no-cancel", action="store_true", help="skip (c)")
    parser.add_argument("--hold-free-pages", type=int, metavar="MS", help="a VM that hands "
                        "freed memory back to its hypervisor at once makes 1 GB figures a "
                        "lottery (tests/benchmarks/page_reporting.py): keep blocks freed less "
                        "than MS ago (e.g. 10000) while this runs; root; put back after")
    args = parser.parse_args()
    run(args.size or _sizes(os.environ.get("BENCH_BACKUP_SIZES", "114")), args.repeat,
        where=tuple(args.where.split(",")), kinds=tuple(args.kinds.split(",")),
        verify=not args.no_verification, cancel=not args.no_cancel,
        hold_free_pages=args.hold_free_pages)
