"""Backup benchmarks: figures and ratios against a baseline run the same way, not timers.

    .venv/bin/python tests/benchmarks/bench_backups.py            # full run
    .venv/bin/python -m pytest tests/benchmarks/bench_backups.py -s   # same, smaller

(a) verification throughput: the catalog's checksum pass over a stored (encrypted)
    payload versus `sha256sum` of the same file, best of N; and the decrypt +
    authenticate pass (every GCM tag checked) versus the same `sha256sum`.
    Goal: checksum pass >= 0.9x sha256sum.
(b) restore wall time versus the bare tools run by hand on the same backup:
    - basebackup: BaseBackupRestorer (S3-less filesystem store: decrypt, tar -x,
      pg_verifybackup, configure, start, promote, validation query) versus by hand
      `tar -x` of the unencrypted tar + `pg_ctl start -w` + one query;
    - pgBackRest: PgBackRestRestorer (--type=immediate) versus by hand `pgbackrest
      restore --type=immediate --target-action=promote` + `pg_ctl start -w` + polling
      pg_is_in_recovery(). Goal <= 1.1x.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.backups.catalog import sha256_stream  # noqa: E402
from controller.backups.crypto import DecryptingReader  # noqa: E402
from controller.backups.filesystem import FilesystemBackupStore  # noqa: E402
from controller.backups.restore import BaseBackupRestorer, PgBackRestRestorer  # noqa: E402
from controller.backups.take import register_pgbackrest, take_basebackup  # noqa: E402
from controller.drill.servers.postgres import (  # noqa: E402
    PG_BIN,
    PostgresServer,
    as_user,
    free_port,
    give_to,
)
from controller.model import Backup, Target  # noqa: E402
from controller.secrets import Secrets  # noqa: E402


def best(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def verification(base: Path, mb: int, repeat: int) -> None:
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


def _wait_primary(pg: PostgresServer) -> None:
    while pg.psql("SELECT pg_is_in_recovery()") != "f":
        time.sleep(0.1)


def _hand_start(data: Path, sock: Path) -> PostgresServer:
    pg = PostgresServer(data.parent, data=data)
    pg.sock = sock
    with (data / "postgresql.auto.conf").open("a") as fh:
        fh.write("archive_mode = off\n")
    pg.start()
    _wait_primary(pg)
    pg.psql("SELECT count(*) FROM orders")
    return pg


def restores(base: Path, rows: int, repeat: int) -> None:
    give_to(base, mode=0o755)
    conf = base / "pgbackrest.conf"
    for sub in ("repo", "log", "lock", "spool"):
        give_to(base / sub)
    source = PostgresServer(base / "source")
    conf.write_text(f"[global]\nrepo1-path={base}/repo\nlog-path={base}/log\n"
                    f"lock-path={base}/lock\nspool-path={base}/spool\nstart-fast=y\n"
                    f"compress-type=none\nrepo1-retention-full=99\n\n[main]\n"
                    f"pg1-path={source.data}\npg1-port={source.port}\n"
                    f"pg1-socket-path={source.sock}\n")
    source.settings = {"archive_mode": "on", "archive_command":
                       f"'pgbackrest --config={conf} --stanza=main archive-push %p'"}
    source.init().start()
    try:
        source.psql(f"CREATE TABLE orders AS SELECT g AS id, g % 97 AS amount "
                    f"FROM generate_series(1, {rows}) g")
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
    plain_tar = base / "plain.tar"
    with store.open_payload(bk) as reader, plain_tar.open("wb") as fh:
        shutil.copyfileobj(reader, fh, 1 << 20)
    plain_tar.chmod(0o644)
    bk_ok = _verified(bk)
    pbk_ok = _verified(pbk)
    validation = [{"name": "rows", "sql": "SELECT count(*) FROM orders", "expect": str(rows)}]
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "filesystem", "options": {"path": str(base / "catalog"),
                                                     "encryptionKey": {"fromEnv": "BENCH_KEY"}}}}),
        secrets=Secrets(), store=store)
    pgbr = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(conf), "stanza": "main"}), secrets=Secrets())
    counter = iter(range(1000))

    def place() -> tuple[Path, Path]:
        d = base / f"r{next(counter)}"
        give_to(d, mode=0o755)
        give_to(d / "sock", mode=0o755)
        return d / "data", d / "sock"

    def ours(r: Any, b: Backup) -> float:
        data, sock = place()
        into = Target(host=None, path=str(data), options={
            "port": free_port(), "socketDir": str(sock), "validation": validation})
        t = time.perf_counter()
        ev = r.restore(backup=b, into=into)
        took = time.perf_counter() - t
        r.stop(into=into)
        shutil.rmtree(data.parent)
        ours.phases = ev["phases"]  # type: ignore[attr-defined]
        return took

    def hand_tar() -> float:
        data, sock = place()
        give_to(data)
        t = time.perf_counter()
        subprocess.run(as_user(["tar", "-x", "-f", str(plain_tar), "-C", str(data)]),
                       check=True)
        pg = _hand_start(data, sock)
        took = time.perf_counter() - t
        pg.stop()
        shutil.rmtree(data.parent)
        return took

    def hand_pgbr() -> float:
        data, sock = place()
        give_to(data)
        t = time.perf_counter()
        subprocess.run(as_user(["pgbackrest", f"--config={conf}", "--stanza=main",
                                f"--pg1-path={data}", f"--set={pbk.meta['pgbackrest']['label']}",
                                "--type=immediate", "--target-action=promote",
                                "--archive-mode=off", "restore"]), check=True)
        pg = _hand_start(data, sock)
        took = time.perf_counter() - t
        pg.stop()
        shutil.rmtree(data.parent)
        return took

    print(f"(b) restore wall time, {rows} rows, plain size {bk.meta['plainSize'] / 1e6:.0f} MB "
          f"(best of {repeat}):")
    for label, mine, hand in (("basebackup", lambda: ours(restorer, bk_ok), hand_tar),
                              ("pgbackrest", lambda: ours(pgbr, pbk_ok), hand_pgbr)):
        t_hand = min(hand() for _ in range(repeat))
        t_mine = min(mine() for _ in range(repeat))
        print(f"    {label:11s} by hand {t_hand:6.2f} s   restorer {t_mine:6.2f} s   "
              f"ratio {t_mine / t_hand:.2f}x   phases {ours.phases}")  # type: ignore[attr-defined]


def _verified(b: Backup) -> Backup:
    from dataclasses import replace

    return replace(b, verified=True, verification="bench")


def run(scale: float = 1.0) -> None:
    if not (PG_BIN / "postgres").exists():
        raise SystemExit(f"{PG_BIN}/postgres missing: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="bench-backups-"))
    base.chmod(0o755)
    try:
        verification(base / "v", max(16, int(512 * scale)), 3)
        restores(base / "r", max(20_000, int(2_000_000 * scale)), 2 if scale >= 1 else 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_bench_backups() -> None:
    run(scale=0.1)


if __name__ == "__main__":
    run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
