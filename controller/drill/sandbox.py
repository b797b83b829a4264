"""The sandbox: a two-site world of real services on loopback, started and torn down as one.

Owns the lifecycle of every server a sandbox drill talks to, so that a drill on one
machine exercises the same backends as production and leaves nothing behind:

- **edge** (`servers.haproxy`): HAProxy in front of the two site apps (`drill.app`:
  `primary` = dc-a, `backup` = dc-b), re-pointed at run time to our apps, which take
  faults per channel;
- **DNS** (`servers.bind`): a BIND primary taking TSIG-signed RFC 2136 updates and
  secondaries fed by NOTIFY + zone transfer, serving `www.example.test`;
- **databases** (`drill.databases`): the primary PostgreSQL of dc-a with the `orders`
  data set and, with `standby: true`, its streaming standby at dc-b, dc-a's host
  reached over SSH (its own sshd, pinned host key) for the fence, and a STONITH hook;
- **backup stores** (`drill.stores`): dc-a's encrypted, verified base backups in moto's
  S3 server and their read-back copies in a second, off-site S3 endpoint;
- **dc-b database host** (`servers.sshd`): reached over SSH with a pinned host key; the
  drill restores the chosen backup into a data directory there;
- **notices**: an SMTP server with STARTTLS and AUTH (`servers.mail`) and a webhook
  receiver for IM and SMS (`servers.webhook`).

Every secret (TSIG key, S3 keys, backup key, SSH key, SMTP password, webhook URLs with
their tokens) is a file under the sandbox directory, referenced by `fromFile`. Startup
runs the independent servers concurrently. `stop()` (also run on failure, on SIGINT,
SIGTERM and SIGHUP, which raise `Interrupted`) stops only what the sandbox started, each
by its PID: every PostgreSQL running in one of the sandbox's own data directories,
whoever started it (the PID in its postmaster.pid: `drill.databases`), each server (the
in-process ones, moto, SMTP and webhook, through their handles), then whatever those
servers started that outlived them (found below their PIDs before they were stopped,
e.g. an SSH session's restore script), a PID only while it still names the same process
(its start time). It then checks every recorded PID is gone and every recorded port
refuses connections, and records what it found in `teardown`; other processes naming
the directory are reported there (`leftAlone`), never signalled. A directory given with
files in it is refused and then left exactly as it was. A second signal during teardown
is noted and ignored, so cleanup finishes.
"""

from __future__ import annotations

import base64
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
from controller.drill.databases import Databases
from controller.drill.runner import Interrupted
from controller.drill.servers.base import ServerError, free_port
from controller.drill.servers.bind import BindServers
from controller.drill.servers.haproxy import HaproxyServers
from controller.drill.servers.mail import MailServer
from controller.drill.servers.postgres import PostgresServer, give_to
from controller.drill.servers.sshd import SshServer
from controller.drill.servers.webhook import WebhookServer
from controller.drill.stores import DATASET, Stores, validation

ZONE = "example.test."
NAME = "www.example.test."
SITES = {"primary": "dc-a", "backup": "dc-b"}
ADDRESSES = {"dc-a": "192.0.2.10", "dc-b": "198.51.100.10"}
SMTP_USER = "failover-bot"
ROOT = Path(__file__).resolve().parents[2]

Echo = Callable[[str], None] | None


class SandboxOptions(BaseModel):
    """What a scenario needs from the world (`spec.sandbox` of a DrillScenario)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    backups: int = Field(1, ge=1, le=4, description="verified daily base backups to take")
    rows: int = Field(20000, ge=1, le=2_000_000, description="rows in the orders table")
    secondaries: int = Field(2, ge=1, le=4, description="secondary authoritative servers")
    standby: bool = Field(False, description="dc-b runs a streaming standby of dc-a's "
                          "database, and dc-a's database host answers SSH (for the fence)")


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
        self.sshd: SshServer | None = None
        self.mail: MailServer | None = None
        self.hooks: WebhookServer | None = None
        self.files: dict[str, Path] = {}
        self.stores = Stores(self.files, rows=self.options.rows, audit=audit)
        self.databases: Databases | None = None
        self.restore_port = 0
        self.timings: dict[str, float] = {}
        self.teardown: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}
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
    def db(self) -> PostgresServer | None:
        """dc-a's primary PostgreSQL."""
        return self.databases.primary if self.databases is not None else None

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
            self.databases = Databases(self.dir, rows=self.options.rows,
                                       standby=self.options.standby)
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.monotonic() - started, 3)
        return self

    def _start_all(self) -> None:
        with ThreadPoolExecutor(max_workers=6, thread_name_prefix="sandbox") as pool:
            moto = pool.submit(self._timed, "s3", self.stores.start,
                               self.dir / "scratch")
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
        dc_a = self.databases.start_host(self.sshd.client_key) if (
            self.databases is not None and self.options.standby) else ""
        self._secret_file("known_hosts", self.sshd.known_hosts + dc_a)

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
        assert self.databases is not None
        self.databases.start()
        moto.result()
        assert self.db is not None
        self.stores.take_backups(self.db, self.options.backups)

    def store(self) -> Any:
        """dc-a's backup store (`drill.stores`)."""
        return self.stores.store()

    def scratch(self) -> Path:
        return self.stores.scratch()

    # --- what the plan and the checks see --------------------------------------------------

    def variables(self) -> dict[str, Any]:
        """Everything a plan template may reference as `${name}`."""
        edge, bind, sshd, mail, stores = self.edge, self.bind, self.sshd, self.mail, self.stores
        assert edge and bind and sshd and mail and self.databases
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
            **self.databases.variables(),
            "backup.store": {"kind": "s3", "options": stores.store_options()},
            "backup.storeOptions": stores.store_options(),
            "backup.offsiteStore": {"kind": "s3", "options": stores.offsite_store_options()},
            "backup.offsiteStoreOptions": stores.offsite_store_options(),
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
        edge, bind, sshd = self.edge, self.bind, self.sshd
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
        for site, service, pid, tcp, detail in (self.databases.services()
                                                if self.databases is not None else []):
            add(site, service, pid, tcp, detail)
        if sshd is not None and sshd.proc is not None:
            add("dc-b", "sshd (database host)", sshd.proc.pid, [sshd.port],
                f"127.0.0.1:{sshd.port} host key pinned; restores into {self.restore_data} "
                f"on port {self.restore_port}")
        for service, port, detail in self.stores.services():
            add("storage", service, None, [port], detail)
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
            "tcpPorts": sorted({p for r in rows for p in r["tcp"]} | {self.restore_port}
                               | (self.databases.ports() if self.databases else set()) - {0}),
            "udpPorts": sorted({p for r in rows for p in r["udp"]}),
            **self.stores.manifest(), "startupSeconds": self.timings, "teardown": self.teardown,
        }

    def describe(self) -> Iterator[str]:
        yield f"sandbox {self.base} (up in {self.timings.get('total', 0):.1f} s; " \
              f"{'kept' if self.keep else 'removed'} on exit)"
        for r in self.services():
            pid = f"pid {r['pid']}" if r["pid"] else "in-process"
            yield f"  {r['site']:<8} {r['service']:<22} {pid:<11} {r['detail']}"
        yield from self.stores.describe()

    # --- teardown --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._previous.items():  # after a signal: a later one not fatal
            signal.signal(sig, signal.SIG_IGN if self._interrupted else handler)
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
        script) and the PostgreSQL running in each of the sandbox's own data directories
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
        dbs = self.databases
        if dbs is not None:  # whoever started them: the sandbox, a rebuild, a restore
            attempt("postgresql", lambda: recorded["pids"].extend(dbs.stop(self.restore_data)))
        for what, obj in (("edge", self.edge), ("dns", self.bind), ("sshd", self.sshd),
                          *self.stores.servers(),
                          ("smtp", self.mail), ("webhook", self.hooks)):
            if obj is not None:
                attempt(what, obj.stop)
        swept: list[dict[str, Any]] = []
        for pid, when in below.items():  # still there once their parents stopped
            command = processes.command(pid)
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
