"""The sandbox: a two-site world of real services on loopback, started and torn down as one.

Owns the lifecycle of every server a sandbox drill talks to, so that a drill on one
machine exercises the same backends as production and leaves nothing behind:

- **edge** (`servers.haproxy`): HAProxy in front of the two site apps (`drill.app`:
  `primary` = dc-a, `backup` = dc-b), re-pointed at run time to our apps, which take
  faults per channel;
- **DNS** (`servers.bind`): a BIND primary taking TSIG-signed RFC 2136 updates and
  secondaries fed by NOTIFY + zone transfer, serving `www.example.test`;
- **databases** (`servers.postgres`): the primary PostgreSQL of dc-a with the `orders`
  data set; its base backups go encrypted into moto's S3 server (`servers.moto`) and are
  verified (checksums, decrypt, pg_verifybackup, test restore) before the drill starts;
- **off-site store**: a second moto S3 endpoint (bucket `dc-b-offsite`, its own S3 keys
  and encryption key) holding a re-encrypted, read-back copy of every verified backup
  (`backups.offsite`), so a drill can lose dc-a's store and restore from the copy
  (moto keeps one state per process: the endpoints differ, the buckets keep them apart);
- **dc-b database host** (`servers.sshd`): reached over SSH with a pinned host key; the
  drill restores the chosen backup into a data directory there;
- **notices**: an SMTP server with STARTTLS and AUTH (`servers.mail`) and a webhook
  receiver for IM and SMS (`servers.webhook`).

Every secret (TSIG key, S3 keys, backup key, SSH key, SMTP password, webhook URLs with
their tokens) is a file under the sandbox directory, referenced by `fromFile`. Startup
runs the independent servers concurrently. `stop()` (also run on failure, on SIGINT,
SIGTERM and SIGHUP, which raise `Interrupted`) stops only what the sandbox started, each
by its PID: the restored PostgreSQL (the PID in the postmaster.pid of the sandbox's own
data directory), each server (the in-process ones, moto, SMTP and webhook, through their
handles), then whatever those servers started that outlived them (found below their PIDs
before they were stopped, e.g. an SSH session's restore script), a PID only while it
still names the same process (its start time). It then checks every recorded PID is gone
and every recorded port refuses connections, and records what it found in `teardown`;
other processes naming the directory are reported there (`leftAlone`), never signalled.
A directory given with files in it is refused and then left exactly as it was. A second
signal during teardown is noted and ignored, so cleanup finishes.
"""

from __future__ import annotations

import base64
import functools
import os
import secrets as random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.drill import processes
from controller.drill.runner import Interrupted
from controller.drill.servers.base import ServerError, free_port
from controller.drill.servers.bind import BindServers
from controller.drill.servers.haproxy import HaproxyServers
from controller.drill.servers.mail import MailServer
from controller.drill.servers.moto import MotoServer
from controller.drill.servers.postgres import PostgresServer, give_to
from controller.drill.servers.sshd import SshServer
from controller.drill.servers.webhook import WebhookServer
from controller.model import Backup

ZONE = "example.test."
NAME = "www.example.test."
SITES = {"primary": "dc-a", "backup": "dc-b"}
ADDRESSES = {"dc-a": "192.0.2.10", "dc-b": "198.51.100.10"}
DATASET = "orders"
BUCKET = "dc-a-backups"
OFFSITE_BUCKET = "dc-b-offsite"
SMTP_USER = "failover-bot"
ROOT = Path(__file__).resolve().parents[2]

Echo = Callable[[str], None] | None


class SandboxOptions(BaseModel):
    """What a scenario needs from the world (`spec.sandbox` of a DrillScenario)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    backups: int = Field(1, ge=1, le=4, description="verified daily base backups to take")
    rows: int = Field(20000, ge=1, le=2_000_000, description="rows in the orders table")
    secondaries: int = Field(2, ge=1, le=4, description="secondary authoritative servers")


def validation(rows: int) -> list[dict[str, Any]]:
    """The checks a restored orders database must pass: consistency, integrity, business."""
    revenue = sum(g % 97 + 1 for g in range(1, rows + 1))
    return [
        {"name": "consistency: orders row count", "sql": "SELECT count(*) FROM orders",
         "expect": str(rows)},
        {"name": "integrity: revenue matches the source",
         "sql": "SELECT sum(amount)::bigint FROM orders", "expect": str(revenue)},
        {"name": "business: newest order readable",
         "sql": "SELECT id FROM orders ORDER BY id DESC LIMIT 1", "expect": str(rows)},
    ]


class Sandbox:
    """`with Sandbox(options) as sb:` the world is up; `sb.variables()` wires plans to it."""

    def __init__(self, options: SandboxOptions | None = None, *, base: Path | None = None,
                 echo: Echo = print, audit: Callable[..., None] | None = None):
        self.options = options or SandboxOptions()
        self.keep = base is not None  # a directory given by the caller is kept (logs)
        self.base = Path(base).resolve() if base is not None else None
        self.echo, self.audit = echo, audit
        self.bind: BindServers | None = None
        self.edge: HaproxyServers | None = None
        self.moto: MotoServer | None = None
        self.offsite_moto: MotoServer | None = None
        self.db: PostgresServer | None = None
        self.sshd: SshServer | None = None
        self.mail: MailServer | None = None
        self.hooks: WebhookServer | None = None
        self.backups: list[Backup] = []  # newest first
        self.offsite_copies: list[Backup] = []  # newest first
        self.files: dict[str, Path] = {}
        self.restore_port = 0
        self.timings: dict[str, float] = {}
        self.teardown: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}
        self._store: Any = None
        self._offsite_store: Any = None
        self._apps: set[str] = set()  # sites whose HAProxy server points at our app
        self._lock = threading.Lock()
        self._stopping = False
        self._owned = False  # the directory is ours: we made it, or found it empty
        self._interrupted: str | None = None
        self._previous: dict[int, Any] = {}

    # --- paths -----------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        assert self.base is not None, "the sandbox is not started"
        return self.base

    @property
    def restore_data(self) -> Path:
        return self.dir / "dc-b-host" / "db" / "data"

    @property
    def restore_socket(self) -> Path:
        return self.dir / "dc-b-host" / "db" / "sock"

    @property
    def plan_file(self) -> Path:
        return self.dir / "plan.yaml"

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Sandbox:
        started = time.monotonic()
        self._install_signals()
        try:
            if self.base is None:
                self.base = Path(tempfile.mkdtemp(prefix="failover-sandbox-"))
            self.base.mkdir(parents=True, exist_ok=True)
            if any(self.base.iterdir()):  # not ours: stop() must leave it and its users be
                raise ServerError(f"sandbox directory {self.base} is not empty (a previous "
                                  "drill's files?); give a new or empty directory")
            self._owned = True
            self.base.chmod(0o755)  # the postgres OS user must reach its directories
            closed = [p for p in self.base.parents if not p.stat().st_mode & 0o001]
            if closed and os.geteuid() == 0:
                raise ServerError(f"the postgres OS user cannot reach {self.base}: {closed[0]} "
                                  f"is mode {closed[0].stat().st_mode & 0o777:o}; pick a "
                                  "directory under /tmp or let others search that directory")
            self._secrets()
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.monotonic() - started, 3)
        return self

    def _start_all(self) -> None:
        with ThreadPoolExecutor(max_workers=6, thread_name_prefix="sandbox") as pool:
            moto = pool.submit(self._timed, "s3", self._start_moto)
            jobs: list[Future[None]] = [
                moto,
                pool.submit(self._timed, "dns", self._start_dns),
                pool.submit(self._timed, "edge", self._start_edge),
                pool.submit(self._timed, "ssh", self._start_sshd),
                pool.submit(self._timed, "notices", self._start_notices),
                pool.submit(self._timed, "database+backups", self._start_db, moto),
            ]
            wait(jobs)
        errors = [str(f.exception()) for f in jobs if f.exception() is not None]
        if errors:
            raise ServerError("the sandbox did not start: " + "; ".join(errors))

    def _timed(self, name: str, fn: Callable[..., None], *args: Any) -> None:
        t = time.monotonic()
        fn(*args)
        self.timings[name] = round(time.monotonic() - t, 3)

    def _secrets(self) -> None:
        folder = self.dir / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        self.tokens = {"im": random.token_urlsafe(18), "sms": random.token_urlsafe(18)}
        values = {
            "s3-access-key-id": "AKIA" + random.token_hex(8).upper(),
            "s3-secret-access-key": random.token_urlsafe(30),
            "backup-key": base64.b64encode(os.urandom(32)).decode(),
            "offsite-s3-access-key-id": "AKIA" + random.token_hex(8).upper(),
            "offsite-s3-secret-access-key": random.token_urlsafe(30),
            "offsite-backup-key": base64.b64encode(os.urandom(32)).decode(),
            "smtp-password": random.token_urlsafe(18),
        }
        for name, value in values.items():
            self._secret_file(name, value)

    def _secret_file(self, name: str, value: str) -> Path:
        path = self.dir / "secrets" / name
        path.write_text(value + ("" if value.endswith("\n") else "\n"))
        path.chmod(0o600)
        self.files[name] = path
        return path

    def secret(self, name: str) -> str:
        return self.files[name].read_text().strip()

    def _start_moto(self) -> None:
        self.moto = MotoServer()
        self.moto.start()
        self.moto.client("s3").create_bucket(Bucket=BUCKET)
        self.offsite_moto = MotoServer()
        self.offsite_moto.start()
        self.offsite_moto.client("s3").create_bucket(Bucket=OFFSITE_BUCKET)

    def _start_dns(self) -> None:
        self.bind = BindServers(zone=ZONE, secondaries=self.options.secondaries,
                                records=[f"www 60 IN A {ADDRESSES['dc-a']}"],
                                base=self.dir / "dns")
        self.bind.start()

    def _start_edge(self) -> None:
        self.edge = HaproxyServers(base=self.dir / "edge")
        self.edge.start()
        for label in SITES:
            self.restart_app(label)

    def restart_app(self, label: str) -> int:
        """Start `label`'s app (on its old port once it had one of ours) and point HAProxy
        at it; the process it replaces is stopped by PID. Returns the new PID."""
        edge = self.edge
        assert edge is not None
        site = edge.sites[label]
        ours = label in self._apps
        log = (self.dir / "edge" / f"app-{label}.log").open("ab")
        argv = [sys.executable, "-m", "controller.drill.app", label, SITES[label]]
        if ours:
            argv += ["--port", str(site.port)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            proc.wait(10)
            raise ServerError(f"the {label} site app did not start (exit {proc.returncode}); "
                              f"see {self.dir / 'edge' / f'app-{label}.log'}")
        port = int(line)
        if not ours:
            reply = edge.command(f"set server {edge.backend}/{site.server} addr 127.0.0.1 "
                                 f"port {port}")
            if "changed" not in reply and reply.strip():
                proc.kill()
                proc.wait(10)
                raise ServerError(f"haproxy refused to re-point {site.server}: {reply.strip()}")
        old, site.proc, site.port = site.proc, proc, port
        self._apps.add(label)
        if old is not None and old.poll() is None:
            old.terminate()
            old.wait(10)
        if old is not None and old.stdout is not None:
            old.stdout.close()
        return proc.pid

    def _start_sshd(self) -> None:
        host = self.dir / "dc-b-host"
        host.mkdir(exist_ok=True)
        host.chmod(0o755)
        give_to(self.restore_socket.parent, mode=0o755)
        self.restore_port = free_port()
        self.sshd = SshServer(host / "ssh")
        self.sshd.start()
        self._secret_file("ssh-key", self.sshd.client_key.read_text())
        self._secret_file("known_hosts", self.sshd.known_hosts)

    def restart_sshd(self) -> int:
        """Start the dc-b host's sshd again on its port with its keys (after `cut-ssh`)."""
        assert self.sshd is not None
        self.sshd.start()
        assert self.sshd.proc is not None
        return self.sshd.proc.pid

    def _start_notices(self) -> None:
        self.mail = MailServer(starttls=True, users={SMTP_USER: self.secret("smtp-password")})
        self.mail.start()
        self.hooks = WebhookServer()
        self.hooks.start()
        for kind, token in self.tokens.items():
            self._secret_file(f"{kind}-webhook-url", self.hooks.url(f"/{kind}/{token}"))

    def _start_db(self, moto: Future[None]) -> None:
        self.db = PostgresServer(self.dir / "dc-a-db")
        self.db.init().start()
        rows = self.options.rows
        self.db.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL, "
                     "placed_at timestamptz NOT NULL DEFAULT now()); "
                     f"INSERT INTO orders (id, amount) SELECT g, g % 97 + 1 "
                     f"FROM generate_series(1, {rows}) g")
        moto.result()
        self._take_backups()

    # --- backups ---------------------------------------------------------------------------

    def store_options(self) -> dict[str, Any]:
        assert self.moto is not None
        return {"bucket": BUCKET, "prefix": f"dc-a/{DATASET}", "endpointUrl": self.moto.endpoint,
                "accessKeyId": {"fromFile": str(self.files["s3-access-key-id"])},
                "secretAccessKey": {"fromFile": str(self.files["s3-secret-access-key"])},
                "encryptionKey": {"fromFile": str(self.files["backup-key"])}}

    def offsite_store_options(self) -> dict[str, Any]:
        """The off-site store: another endpoint and bucket, with keys of its own."""
        assert self.offsite_moto is not None
        return {"bucket": OFFSITE_BUCKET, "prefix": f"dc-b/{DATASET}",
                "endpointUrl": self.offsite_moto.endpoint,
                "accessKeyId": {"fromFile": str(self.files["offsite-s3-access-key-id"])},
                "secretAccessKey": {"fromFile": str(
                    self.files["offsite-s3-secret-access-key"])},
                "encryptionKey": {"fromFile": str(self.files["offsite-backup-key"])}}

    def store(self) -> Any:
        if self._store is None:
            self._store = self._s3_store(self.store_options())
        return self._store

    def offsite_store(self) -> Any:
        if self._offsite_store is None:
            self._offsite_store = self._s3_store(self.offsite_store_options())
        return self._offsite_store

    def _s3_store(self, options: dict[str, Any]) -> Any:
        from controller.backups.s3 import S3BackupStore
        from controller.secrets import Secrets

        return S3BackupStore(S3BackupStore.Options.model_validate(options), secrets=Secrets(),
                             audit=self.audit)

    def verifier(self) -> Any:
        from controller.backups.verify import CatalogVerifier
        from controller.secrets import Secrets

        return CatalogVerifier(CatalogVerifier.Options.model_validate({
            "store": {"kind": "s3", "options": self.store_options()},
            "scratch": str(self.scratch()), "validation": validation(self.options.rows),
            "actor": "sandbox:verify"}), secrets=Secrets(), audit=self.audit,
            store=self.store())

    def scratch(self) -> Path:
        path = self.dir / "scratch"
        path.mkdir(exist_ok=True)
        path.chmod(0o755)
        return path

    def _take_backups(self) -> None:
        from controller.backups.take import take_basebackup

        assert self.db is not None
        store, verifier = self.store(), self.verifier()
        taken: list[Backup] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-verify") as pool:
            checks = []
            for _ in range(self.options.backups):
                while taken and int(time.time()) <= int(taken[-1].taken_at):
                    time.sleep(0.02)  # backup names carry whole seconds: one per second
                taken.append(take_basebackup(
                    store, dataset=DATASET, kind="daily", actor="sandbox:nightly",
                    host=str(self.db.sock), port=self.db.port, scratch=str(self.scratch())))
                checks.append(pool.submit(verifier.verify, backup=taken[-1]))
            results = [c.result() for c in checks]
        failed = [r for r in results if not r["passed"]]
        if failed:
            raise ServerError("a fresh backup failed verification: "
                              + "; ".join(r["summary"] for r in failed))
        self.backups = store.list(dataset=DATASET)
        self._copy_offsite()

    def _copy_offsite(self) -> None:
        """Copy every verified backup to the off-site store and read it back there."""
        from controller.backups.offsite import copy_offsite

        store, offsite = self.store(), self.offsite_store()
        for backup in self.backups:
            copy = copy_offsite(store, offsite, backup, actor="sandbox:offsite")
            if not copy.verified:
                raise ServerError(f"the off-site copy of {backup.id} failed its check: "
                                  f"{copy.verification}")
        self.offsite_copies = offsite.list(dataset=DATASET)

    # --- what the plan and the checks see --------------------------------------------------

    def variables(self) -> dict[str, Any]:
        """Everything a plan template may reference as `${name}`."""
        edge, bind, sshd, mail = self.edge, self.bind, self.sshd, self.mail
        assert edge and bind and sshd and mail and self.db
        return {
            "sandbox.dir": str(self.dir),
            "edge.url": edge.url(""), "edge.socket": str(edge.socket),
            "edge.backend": edge.backend,
            "edge.servers": {SITES[label]: [s.server] for label, s in edge.sites.items()},
            "sites.primary": SITES["primary"], "sites.backup": SITES["backup"],
            "dns.zone": ZONE, "dns.name": NAME, "dns.server": bind.primary.address,
            "dns.port": bind.primary.port, "dns.keyName": bind.key_name,
            "dns.keyFile": str(bind.key_file),
            "dns.nameservers": [{"address": s.address, "port": s.port, "name": s.name}
                                for s in bind.servers],
            "dns.primaryAddress": ADDRESSES["dc-a"], "dns.backupAddress": ADDRESSES["dc-b"],
            "db.primary.host": str(self.db.sock), "db.primary.port": self.db.port,
            "backup.store": {"kind": "s3", "options": self.store_options()},
            "backup.storeOptions": self.store_options(),
            "backup.offsiteStore": {"kind": "s3", "options": self.offsite_store_options()},
            "backup.offsiteStoreOptions": self.offsite_store_options(),
            "backup.dataset": DATASET, "backup.scratch": str(self.scratch()),
            "backup.validation": validation(self.options.rows),
            "restore.host": "127.0.0.1", "restore.sshPort": sshd.port,
            "restore.ssh": {"user": sshd.user,
                            "privateKey": {"fromFile": str(self.files["ssh-key"])},
                            "knownHosts": {"fromFile": str(self.files["known_hosts"])},
                            "connectTimeout": 5},
            "restore.path": str(self.restore_data), "restore.socketDir": str(self.restore_socket),
            "restore.port": self.restore_port,
            "mail.host": mail.host, "mail.port": mail.port, "mail.caFile": str(mail.ca_file),
            "mail.username": SMTP_USER,
            "mail.password": {"fromFile": str(self.files["smtp-password"])},
            "im.url": {"fromFile": str(self.files["im-webhook-url"])},
            "sms.url": {"fromFile": str(self.files["sms-webhook-url"])},
        }

    def services(self) -> list[dict[str, Any]]:
        """What runs where: one row per server (pid None = a thread of this process)."""
        edge, bind, sshd, db = self.edge, self.bind, self.sshd, self.db
        rows: list[dict[str, Any]] = []

        def add(where: str, what: str, pid: int | None, tcp: list[int], detail: str,
                udp: list[int] | None = None) -> None:
            rows.append({"site": where, "service": what, "pid": pid, "tcp": tcp,
                         "udp": udp or [], "detail": detail})

        if edge is not None and edge.pid is not None:
            add("edge", "haproxy", edge.pid, [edge.port],
                f"{edge.url('')} (runtime API {edge.socket})")
            for label, app in edge.sites.items():
                add(SITES[label], f"app ({label})", app.pid, [app.port], f"{app.url} "
                    "channels /web /api /hotline")
        if bind is not None:
            for ns in bind.servers:
                role = "primary, RFC 2136 + TSIG" if ns.primary else "secondary, NOTIFY + XFR"
                add("dns", f"named {ns.name}", ns.pid, [ns.port], f"{ns.address}:{ns.port} "
                    f"{role}, zone {ZONE}", udp=[ns.port])
        if db is not None and db.pid is not None:
            add("dc-a", "postgresql (primary)", db.pid, [db.port],
                f"127.0.0.1:{db.port} data {db.data}, table {DATASET}")
        if sshd is not None and sshd.proc is not None:
            add("dc-b", "sshd (database host)", sshd.proc.pid, [sshd.port],
                f"127.0.0.1:{sshd.port} host key pinned; restores into {self.restore_data} "
                f"on port {self.restore_port}")
        if self.moto is not None:
            add("storage", "moto S3", None, [self.moto.port],
                f"{self.moto.endpoint} bucket {BUCKET}, AES-256-GCM catalog")
        if self.offsite_moto is not None:
            add("storage", "moto S3 (off-site)", None, [self.offsite_moto.port],
                f"{self.offsite_moto.endpoint} bucket {OFFSITE_BUCKET}, own key, copies "
                "read back")
        if self.mail is not None:
            add("notices", "smtp", None, [self.mail.port],
                f"{self.mail.host}:{self.mail.port} STARTTLS + AUTH")
        if self.hooks is not None:
            add("notices", "webhook (IM, SMS)", None, [self.hooks.port], self.hooks.endpoint)
        return rows

    def manifest(self) -> dict[str, Any]:
        rows = self.services()
        return {
            "dir": str(self.base), "kept": self.keep, "services": rows,
            "pids": sorted({r["pid"] for r in rows if r["pid"]}),
            "tcpPorts": sorted({p for r in rows for p in r["tcp"]} | {self.restore_port} - {0}),
            "udpPorts": sorted({p for r in rows for p in r["udp"]}),
            "backups": [{"id": b.id, "kind": b.kind, "verified": b.verified,
                         "verification": b.verification} for b in self.backups],
            "offsiteCopies": [{"id": b.id, "location": b.location, "verified": b.verified}
                              for b in self.offsite_copies],
            "startupSeconds": self.timings, "teardown": self.teardown,
        }

    def describe(self) -> Iterator[str]:
        yield f"sandbox {self.base} (up in {self.timings.get('total', 0):.1f} s; " \
              f"{'kept' if self.keep else 'removed'} on exit)"
        for r in self.services():
            pid = f"pid {r['pid']}" if r["pid"] else "in-process"
            yield f"  {r['site']:<8} {r['service']:<22} {pid:<11} {r['detail']}"
        for b in self.backups:
            yield f"  {'backups':<8} {b.id:<22} {'verified' if b.verified else 'NOT verified'}"
        for b in self.offsite_copies:
            yield f"  {'off-site':<8} {b.id:<22} {'verified' if b.verified else 'NOT verified'}" \
                  f" {b.location}"

    # --- teardown --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def interrupted(self) -> str | None:
        """The signal that asked for a stop (the drill checks it at every tick)."""
        return self._interrupted

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stopping or self._interrupted:
            if self.echo:
                self.echo(f"sandbox: {name} again; still tearing down, please wait")
            return
        self._interrupted = name
        raise Interrupted(name)

    def stop(self) -> dict[str, Any]:
        """Stop what the sandbox started, by PID; check PIDs and ports; idempotent.

        Only processes the sandbox started are signalled: its servers, whatever they
        started (found below their PIDs before they stop, e.g. an SSH session's restore
        script) and the PostgreSQL a restore started in the sandbox's own data directory
        (the PID in its postmaster.pid, if that process still names the directory). A
        process that merely names the directory is reported (`leftAlone`), never stopped.
        A directory the sandbox refused (not empty) is not touched at all."""
        with self._lock:
            if self._stopping:
                return self.teardown
            self._stopping = True
        if self.base is None or not self._owned:
            self._restore_signals()
            return self.teardown
        started = time.monotonic()
        recorded = self.manifest()
        for t in threading.enumerate():  # a step still running in the executor's thread
            if t.name.startswith("step-") and t.is_alive():
                t.join(15)
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        below = processes.descendants([p for p in recorded["pids"] if p])
        restored = self._restored_postmaster()
        if restored is not None:
            pid, when = restored
            recorded["pids"].append(pid)
            attempt("restored postgresql", functools.partial(
                processes.stop_same, pid, when, signal.SIGINT))
        for what, obj in (("edge", self.edge), ("dns", self.bind), ("sshd", self.sshd),
                          ("postgresql", self.db), ("s3", self.moto),
                          ("s3 off-site", self.offsite_moto), ("smtp", self.mail),
                          ("webhook", self.hooks)):
            if obj is not None:
                attempt(what, obj.stop)
        swept: list[dict[str, Any]] = []
        for pid, when in below.items():  # still there once their parents stopped
            command = _command(pid)
            try:
                if processes.stop_same(pid, when):
                    swept.append({"pid": pid, "command": command})
            except Exception as exc:
                errors.append(f"process {pid} ({command}): {exc}")
        alive = [p for p in recorded["pids"] if processes.alive(p)]
        alive += [item["pid"] for item in swept if processes.alive(item["pid"])]
        listening = [p for p in recorded["tcpPorts"] if processes.listening(p)]
        udp = [p for p in recorded["udpPorts"] if processes.udp_bound(p)]
        others = processes.naming(self.dir)
        if others and self.echo:
            self.echo("sandbox: left running (not started by the sandbox): " + "; ".join(
                f"pid {o['pid']} {o['command']}" for o in others))
        self.teardown = {"seconds": round(time.monotonic() - started, 3),
                         "stoppedPids": recorded["pids"], "orphansStopped": swept,
                         "leftAlone": others, "pidsAlive": alive, "tcpListening": listening,
                         "udpBound": udp, "errors": errors,
                         "clean": not (alive or listening or udp or errors)}
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._restore_signals()
        return self.teardown

    def _restored_postmaster(self) -> tuple[int, int] | None:
        """The PostgreSQL a restore started in the sandbox's dc-b data directory: the PID
        of its postmaster.pid, while that process still names the directory."""
        pid = processes.postmaster(self.restore_data)
        when = processes.started(pid) if pid is not None else None
        if pid is None or when is None or str(self.restore_data) not in _command(pid):
            return None
        return pid, when


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(
            errors="replace").replace("\0", " ").strip()[:160]
    except OSError:
        return ""
