"""Backup pipeline benchmark: a backup's life up to its checked off-site copy, through the
controller's path against the bare tools on the same bytes; figures and ratios, not timers.

    .venv/bin/python tests/benchmarks/bench_backup_pipeline.py               # 114 MB
    .venv/bin/python tests/benchmarks/bench_backup_pipeline.py --size 114 --size 1024
    .venv/bin/python tests/benchmarks/bench_backup_pipeline.py --kinds basebackup
    .venv/bin/python -m pytest tests/benchmarks/bench_backup_pipeline.py -s  # one small size

One source PostgreSQL 15 (its `orders` table filled until a base backup is about the size
asked, as in bench_backups.py), two moto S3 servers (dc-a's store, dc-b's off-site store)
and a pgBackRest stanza with two encrypted repositories (repo2: the off-site one).

- controller: `backups.job.BackupJob.run()` of a `spec.backups` set, as `failoverctl
  backup` runs it: preflight, take, verify right after, off-site copy checked there,
  prune (retention keep 1, so each run removes the previous one's backup):
  - basebackup: `pg_basebackup` (plain) streamed through tar + AES-256-GCM into S3 A and,
    in the same pass, with the off-site key into S3 B (the staged copy); the verifier's
    checksums pass (SHA-256 of the stored object read back from S3 A) and its test
    restore (decrypt, pg_verifybackup, start, validation: a base backup is never left
    unproven); the staged copy cataloged in S3 B and read back there (stored SHA-256,
    every chunk, the plaintext's SHA-256);
  - pgbackrest: `pgbackrest backup` (repo1) registered in S3 A's catalog, `pgbackrest
    verify`, the off-site copy a `pgbackrest backup` into repo2 proven by `pgbackrest
    verify --repo=2` (the verifier's `testRestore: false`, allowed for pgBackRest sets):
    a differential backup against repo2's full set (`offsiteFullEvery`), so the timed
    runs follow a first, untimed-for-the-goal run whose off-site copy is that full (its
    figures printed apart: the weekly cost).
- bare tools, the same bytes by hand: `pg_basebackup -Ft` (same options) uploaded to S3 A
  (boto3 managed transfer), or `pgbackrest backup`; `sha256sum` of the stored bytes
  (streamed back from S3 A, or the set's files in repo1); a bare S3 copy to the second
  moto server (boto3: S3 A's objects streamed into S3 B, or `tar` of the set's files
  streamed into S3 B).

Throughput is MB of backup (the plain tar for a base backup, the repository size for a
pgBackRest set) per second of wall time, best of N, runs interleaved. The goal compares
like with like: the controller's time without the test restore (the bare tools restore
nothing; its seconds are printed apart) against the bare tools, <= 1.2x. (Issue 23 asks
for this comparison without a bound; 1.2x is the project's own target. A pgBackRest set
misses it at 114 MB by construction: its off-site copy is a second `pgbackrest backup`,
~2.4 s of pgBackRest's fixed work here, which pgBackRest 2.45 cannot run beside the first
(a lock per stanza and a PostgreSQL advisory lock per backup); 2.53 allows backups to
different repositories at once.)
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.backups.job import BackupJob  # noqa: E402
from controller.backups.s3 import S3BackupStore  # noqa: E402
from controller.backups.verify import CatalogVerifier  # noqa: E402
from controller.drill.servers.moto import MotoServer  # noqa: E402
from controller.drill.servers.postgres import (  # noqa: E402
    PG_BIN,
    PostgresServer,
    archive_to_pgbackrest,
    as_user,
    give_to,
)
from controller.model import Backup  # noqa: E402
from controller.plan import BackupSet  # noqa: E402
from controller.secrets import Secrets  # noqa: E402
from tests.benchmarks.bench_backups import Goal, _fill  # noqa: E402

GOAL = 1.2
KEYS = ("BENCH_PIPELINE_KEY_A", "BENCH_PIPELINE_KEY_B")


@dataclass
class Run:
    """One pass of a pipeline: its bytes, wall seconds, and the seconds of each part."""

    bytes: int
    seconds: float
    parts: dict[str, float]
    test_restore: float = 0.0  # the controller's test restore, inside `seconds`

    @property
    def like_for_like(self) -> float:
        return self.seconds - self.test_restore

    def mb_per_s(self, seconds: float) -> float:
        return self.bytes / 1e6 / seconds


class World:
    """The servers and stores both pipelines use."""

    def __init__(self, base: Path, mb: int):
        self.base = base
        give_to(base, mode=0o755)
        self.moto_a, self.moto_b = MotoServer().start(), MotoServer().start()
        self.a, self.b = self.moto_a.client("s3"), self.moto_b.client("s3")
        for client, bucket in ((self.a, "dc-a"), (self.b, "dc-b")):
            client.create_bucket(Bucket=bucket)
        for env in KEYS:
            os.environ[env] = base64.b64encode(os.urandom(32)).decode()
        os.environ["BENCH_PIPELINE_AWS"] = "bench-credential"
        self.source = PostgresServer(base / "source")
        self.conf = archive_to_pgbackrest(self.source, base / "pgbackrest")
        self.offsite_repo = base / "pgbackrest-offsite"
        give_to(self.offsite_repo)
        self.conf.write_text(self.conf.read_text().replace(
            "[global]\n", "[global]\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=bench-a\n"
                          f"repo2-path={self.offsite_repo}\nrepo2-cipher-type=aes-256-cbc\n"
                          "repo2-cipher-pass=bench-b\nrepo2-retention-full=1\n"
                          "archive-timeout=30\n"))
        self.conf.write_text(self.conf.read_text().replace("repo1-retention-full=9999",
                                                           "repo1-retention-full=1"))
        self.source.init().start()
        self.rows = _fill(self.source, mb)
        self.pgbackrest(["stanza-create"])
        self.runs = iter(range(10_000))

    def close(self) -> None:
        self.source.stop()
        self.moto_a.stop()
        self.moto_b.stop()

    def pgbackrest(self, args: list[str]) -> str:
        return subprocess.run(as_user(["pgbackrest", f"--config={self.conf}", "--stanza=main",
                                       "--log-level-console=error", *args]),
                              check=True, capture_output=True, text=True).stdout

    def store_options(self, site: str) -> dict[str, Any]:
        moto, env = (self.moto_a, KEYS[0]) if site == "dc-a" else (self.moto_b, KEYS[1])
        return {"bucket": site, "prefix": f"{site}/orders", "endpointUrl": moto.endpoint,
                "accessKeyId": {"fromEnv": "BENCH_PIPELINE_AWS"},
                "secretAccessKey": {"fromEnv": "BENCH_PIPELINE_AWS"},
                "encryptionKey": {"fromEnv": env}}

    def store(self, site: str) -> S3BackupStore:
        return S3BackupStore(S3BackupStore.Options.model_validate(self.store_options(site)),
                             secrets=Secrets())

    def empty(self) -> None:
        """Remove the bare runs' objects (the controller's prune removes its own)."""
        for client, bucket in ((self.a, "dc-a"), (self.b, "dc-b")):
            for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix="bare/"):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=obj["Key"])

    # --- the controller's path ---------------------------------------------------------

    def controller(self, kind: str) -> Run:
        if kind == "basebackup":
            source: dict[str, Any] = {"basebackup": {"host": str(self.source.sock),
                                                     "port": self.source.port}}
            verifier_extra: dict[str, Any] = {
                "validation": [{"name": "rows", "sql": "SELECT count(*) FROM orders",
                                "expect": str(self.rows)}]}
        else:
            source = {"pgbackrest": {"config": str(self.conf), "stanza": "main",
                                     "offsiteRepo": 2}}
            verifier_extra = {"testRestore": False,
                              "pgbackrest": {"config": str(self.conf), "stanza": "main"}}
        spec = BackupSet.model_validate({
            "dataset": "orders", "kind": "daily", "source": source, "store": "dc-a",
            "offsite": "dc-b", "verifier": "verify", "retention": {"keep": 1}})
        store = self.store("dc-a")
        verifier = CatalogVerifier(CatalogVerifier.Options.model_validate({
            "store": {"kind": "s3", "options": self.store_options("dc-a")},
            "scratch": str(self.base), **verifier_extra}), secrets=Secrets(), store=store)
        # the test restore's wall time (checks, then stopping its server and removing it)
        tested: list[float] = []
        test_restore = verifier._test_restore

        def timed_test_restore(backup: Backup, checks: list[dict[str, Any]]) -> None:
            t = time.perf_counter()
            try:
                test_restore(backup, checks)
            finally:
                tested.append(time.perf_counter() - t)

        verifier._test_restore = timed_test_restore  # type: ignore[method-assign]
        os.sync()
        t = time.perf_counter()
        out = BackupJob(spec, store=store, offsite=self.store("dc-b"), verifier=verifier,
                        actor="bench").run()
        took = time.perf_counter() - t
        if not out.ok:
            raise RuntimeError(f"the backup job failed: {out.sentence()}")
        backup = next(b for b in store.list(dataset="orders") if b.id == out.backup)
        size = backup.meta["plainSize"] if kind == "basebackup" else backup.size
        time.sleep(1.05)  # backup names carry whole seconds: the next run needs a later one
        return Run(int(size or 0), took, dict(out.seconds), test_restore=sum(tested))

    # --- the bare tools ------------------------------------------------------------------

    def bare(self, kind: str) -> Run:
        scratch = self.base / f"bare-{next(self.runs)}"
        give_to(scratch, mode=0o755)
        parts: dict[str, float] = {}

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            result = fn()
            parts[name] = time.perf_counter() - t
            return result

        os.sync()
        t = time.perf_counter()
        if kind == "basebackup":
            size = self._bare_basebackup(scratch, timed)
        else:
            size = self._bare_pgbackrest(scratch, timed)
        took = time.perf_counter() - t
        shutil.rmtree(scratch)
        self.empty()
        return Run(size, took, {k: round(v, 3) for k, v in parts.items()})

    def _bare_basebackup(self, scratch: Path, timed: Callable[[str, Callable[[], Any]], Any]
                         ) -> int:
        target = scratch / "backup"
        timed("pg_basebackup", lambda: subprocess.run(as_user([
            str(PG_BIN / "pg_basebackup"), "-h", str(self.source.sock), "-p",
            str(self.source.port), "-U", "postgres", "-D", str(target), "-F", "t", "-X",
            "stream", "-c", "fast", "--no-sync", "--manifest-checksums=SHA256"]),
            check=True, capture_output=True))
        files = sorted(target.iterdir())
        keys = [f"bare/{scratch.name}/{f.name}" for f in files]

        def upload() -> None:
            for f, k in zip(files, keys, strict=True):
                self.a.upload_file(str(f), "dc-a", k)

        def checksums() -> None:
            for k in keys:
                self._sha256sum(k)

        def copy() -> None:
            for k in keys:
                self.b.upload_fileobj(self.a.get_object(Bucket="dc-a", Key=k)["Body"],
                                      "dc-b", k)

        timed("upload to S3 A", upload)
        timed("sha256sum (from S3 A)", checksums)
        timed("S3 A -> S3 B", copy)
        return sum(f.stat().st_size for f in files if f.name.endswith(".tar"))

    def _sha256sum(self, key: str) -> None:
        body = self.a.get_object(Bucket="dc-a", Key=key)["Body"]
        proc = subprocess.Popen(["sha256sum", "-"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)
        assert proc.stdin is not None
        for chunk in body.iter_chunks(1 << 20):
            proc.stdin.write(chunk)
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"sha256sum of {key} failed")

    def _bare_pgbackrest(self, scratch: Path, timed: Callable[[str, Callable[[], Any]], Any]
                         ) -> int:
        timed("pgbackrest backup", lambda: self.pgbackrest(["--repo=1", "--type=full",
                                                            "backup"]))
        sets = sorted(p for p in (self.base / "pgbackrest" / "repo" / "backup" / "main")
                      .iterdir() if p.is_dir() and p.name[:1].isdigit())
        newest = sets[-1]
        files = [p for p in newest.rglob("*") if p.is_file()]
        timed("sha256sum", lambda: subprocess.run(["sha256sum", *map(str, files)],
                                                  check=True, capture_output=True))

        def copy() -> None:
            tar = subprocess.Popen(["tar", "-c", "-f", "-", "-C", str(newest.parent),
                                    newest.name], stdout=subprocess.PIPE)
            assert tar.stdout is not None
            self.b.upload_fileobj(tar.stdout, "dc-b", f"bare/{scratch.name}/{newest.name}.tar")
            if tar.wait() != 0:
                raise RuntimeError("tar of the set failed")

        timed("tar | S3 B", copy)
        return sum(f.stat().st_size for f in files)


def pipeline(base: Path, mb: int, repeat: int, kinds: list[str]) -> list[Goal]:
    world = World(base, mb)
    goals: list[Goal] = []
    try:
        print(f"=== {mb} MB source ({world.rows} rows), best of {repeat}, runs interleaved ===")
        for kind in kinds:
            bare: list[Run] = []
            ours: list[Run] = []
            if kind == "pgbackrest":  # repo2's full, which the timed runs' diffs build on
                first = world.controller(kind)
                print(f"  pgbackrest first run (off-site copy: repo2's full set): "
                      f"{first.seconds:6.2f} s  {first.mb_per_s(first.seconds):6.1f} MB/s   "
                      f"{first.parts}")
            for _ in range(repeat):
                bare.append(world.bare(kind))
                ours.append(world.controller(kind))
            b = min(bare, key=lambda r: r.seconds)
            o = min(ours, key=lambda r: r.like_for_like)
            ratio = b.mb_per_s(b.seconds) / o.mb_per_s(o.like_for_like)
            # the bare off-site copy of a set is `tar` of its files; the controller's is a
            # differential `pgbackrest backup` into the off-site repository (its own cipher
            # pass) on the full the first run put there: said in the label
            label = f"{mb} MB {kind} pipeline vs bare tools" + (
                " (off-site: diff on repo2's full vs bare file copy)" if kind == "pgbackrest"
                else "")
            goal = Goal(label, ratio, GOAL)
            goals.append(goal)
            print(f"  {kind}:")
            print(f"    bare tools   {b.bytes / 1e6:7.0f} MB  {b.seconds:6.2f} s  "
                  f"{b.mb_per_s(b.seconds):6.1f} MB/s   {b.parts}")
            print(f"    controller   {o.bytes / 1e6:7.0f} MB  {o.like_for_like:6.2f} s  "
                  f"{o.mb_per_s(o.like_for_like):6.1f} MB/s   {o.parts}"
                  + (f" (its test restore {o.test_restore:.2f} s apart; with it "
                     f"{o.seconds:.2f} s, {o.mb_per_s(o.seconds):.1f} MB/s)"
                     if o.test_restore else ""))
            print(f"    ratio {ratio:.2f}x (goal <= {GOAL}x): "
                  f"{'goal met' if goal.met else 'goal not met'}")
        return goals
    finally:
        world.close()


def run(sizes: list[int], repeat: int | None = None,
        kinds: tuple[str, ...] = ("basebackup", "pgbackrest")) -> list[Goal]:
    if not (PG_BIN / "postgres").exists():
        raise SystemExit(f"{PG_BIN}/postgres missing: apt-get install postgresql")
    goals: list[Goal] = []
    for mb in sizes:
        base = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        try:
            goals += pipeline(base, mb, repeat or (2 if mb >= 100 else 1), list(kinds))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print("=== goals ===")
    for goal in goals:
        print(f"    {goal}")
    return goals


def test_bench_backup_pipeline() -> None:
    run([50])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, action="append", metavar="MB",
                        help="base backup size in MB, repeatable (default 114)")
    parser.add_argument("--repeat", type=int, help="runs per figure, best kept (default 2; "
                        "1 below 100 MB)")
    parser.add_argument("--kinds", default="basebackup,pgbackrest",
                        help="basebackup, pgbackrest or both")
    args = parser.parse_args()
    run(args.size or [114], args.repeat, tuple(args.kinds.split(",")))
