"""Faults a sandbox scenario injects into the real services, each with its repair.

Owns the `Fault` implementations (`inject()` / `clear()`, each returning one sentence
for the log and the report) and their declarative form in a scenario (`FaultSpec`):

- `kill-app`: SIGKILL the primary site's app process; repair starts a new one on the
  same port (HAProxy's server entry still points there);
- `slow-app` / `flap-app` / `channel-down`: the primary app answers the given channels
  after `delay`, every other request with 503, or always 503 (see `drill.app`);
- `kill-db`: immediate shutdown (SIGQUIT, like a crash) of dc-a's PostgreSQL by its
  PID; repair starts it again (crash recovery), unless dc-b's standby was promoted
  meanwhile: dc-a then stays down (never two writable primaries), for the failback to
  rebuild it as dc-b's standby;
- `corrupt-backup`: flip one byte of the newest backup's stored payload in S3, then
  re-verify it as the periodic verification would: it is marked failed (checksum
  mismatch), so a restore must fall back to an older verified backup; there is nothing
  to repair (the bad copy stays marked failed);
- `swap-payloads`: exchange the stored payloads of the newest and the oldest backup in S3
  after both were verified (a mis-copy, or someone's mistake): both stay marked verified,
  so the restore must refuse the swapped one, naming both, and fall back to the next
  verified backup; repair puts each payload back;
- `lose-store`: dc-a's backup store is lost: every object of its bucket (payloads and
  catalog) is deleted, so only the off-site copies are left to restore from; repair puts
  each object back as it was (they were kept aside, in memory: sandbox backups are small);
- `stop-dns-server`: SIGSTOP one authoritative server (it stops answering and taking
  NOTIFYs); repair SIGCONTs it, and it catches up by zone transfer;
- `cut-ssh`: stop the dc-b database host's sshd (by PID); repair starts it again on its
  port with its host key.
"""

from __future__ import annotations

import signal
import urllib.request
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.backups import naming
from controller.drill.processes import stop_pid
from controller.drill.sandbox import SITES, Sandbox
from controller.plan import Duration

Kind = Literal["kill-app", "slow-app", "flap-app", "channel-down", "kill-db",
               "corrupt-backup", "swap-payloads", "lose-store", "stop-dns-server",
               "cut-ssh"]


class FaultSpec(BaseModel):
    """One fault of a scenario (`spec.faults[]`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Kind
    site: Literal["primary", "backup"] = "primary"
    channels: list[str] = Field(default_factory=list,
                                description="app faults: channels hit; empty = every one")
    delay: Duration = Field(1.0, description="slow-app: answer after this long")
    server: str = Field("ns3", description="stop-dns-server: ns1 is the primary")


class AppFault:
    """slow-app, flap-app, channel-down: the app's own fault switch (`POST /_fault`)."""

    MODES = {"slow-app": "slow", "flap-app": "flap", "channel-down": "down"}

    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb, self.spec = sb, spec
        self.mode = self.MODES[spec.kind]

    def _set(self, mode: str) -> None:
        assert self.sb.edge is not None
        query = f"mode={mode}&delay={self.spec.delay:g}"
        if self.spec.channels:
            query += "&channels=" + ",".join(self.spec.channels)
        url = f"{self.sb.edge.sites[self.spec.site].url}/_fault?{query}"
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"),
                                    timeout=5) as reply:
            reply.read()

    def inject(self) -> str:
        self._set(self.mode)
        what = ", ".join(f"/{c}" for c in self.spec.channels) or "every channel"
        how = {"slow": f"answers after {self.spec.delay:g} s", "flap": "answers every other "
               "request with 503", "down": "answers 503"}[self.mode]
        return f"{SITES[self.spec.site]} app {how} on {what}"

    def clear(self) -> str:
        self._set("ok")
        return f"{SITES[self.spec.site]} app healthy again"


class KillApp:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb, self.label = sb, spec.site

    def inject(self) -> str:
        assert self.sb.edge is not None
        proc = self.sb.edge.sites[self.label].proc
        assert proc is not None
        proc.kill()
        proc.wait(10)
        return f"{SITES[self.label]} app (pid {proc.pid}) killed with SIGKILL"

    def clear(self) -> str:
        pid = self.sb.restart_app(self.label)
        return f"{SITES[self.label]} app restarted (pid {pid})"


class KillDb:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb = sb

    def inject(self) -> str:
        db = self.sb.db
        assert db is not None and db.pid is not None
        pid, db.pid = db.pid, None
        stop_pid(pid, signal.SIGQUIT)
        return f"dc-a PostgreSQL (pid {pid}) crashed (immediate shutdown)"

    def clear(self) -> str:
        db, dbs = self.sb.db, self.sb.databases
        assert db is not None and dbs is not None
        if dbs.promoted():
            return ("dc-a's database host repaired; its PostgreSQL stays down: dc-b was "
                    "promoted, and the failback rebuilds dc-a as dc-b's standby")
        db.start()
        return f"dc-a PostgreSQL started again after crash recovery (pid {db.pid})"


class CorruptBackup:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb = sb

    def inject(self) -> str:
        from controller.drill.stores import DATASET

        store = self.sb.store()
        newest = store.list(dataset=DATASET)[0]
        obj = newest.meta["objects"][0]
        key = f"{store.objects.prefix}{obj['key']}"
        client, bucket = store.objects.client, store.objects.bucket
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0x01
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        result = self.sb.stores.verifier().verify(backup=newest, actor="verifier:periodic")
        state = "failed" if not result["passed"] else "still PASSED (unexpected)"
        return (f"newest backup {newest.id}: one byte flipped in s3://{bucket}/{key}; "
                f"re-verification {state}: {result['summary']}")

    def clear(self) -> str:
        return "nothing to repair: the corrupted backup stays marked failed"


class SwapPayloads:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb = sb
        self.swapped: list[str] = []

    def _swap(self, names: list[str]) -> str:
        store = self.sb.store()
        client, bucket = store.objects.client, store.objects.bucket
        keys = [f"{store.objects.prefix}{naming.payload_key(n)}" for n in names]
        data = [client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
        client.put_object(Bucket=bucket, Key=keys[0], Body=data[1])
        client.put_object(Bucket=bucket, Key=keys[1], Body=data[0])
        return f"s3://{bucket}/{keys[0]} and s3://{bucket}/{keys[1]}"

    def inject(self) -> str:
        from controller.drill.stores import DATASET

        listed = self.sb.store().list(dataset=DATASET)
        if len(listed) < 3:
            raise ValueError(f"swap-payloads needs three backups (`sandbox: {{backups: 3}}`), "
                             f"so one is left intact to fall back to; the sandbox took "
                             f"{len(listed)}")
        self.swapped = [listed[0].id, listed[-1].id]
        where = self._swap(self.swapped)
        return (f"payloads of the newest backup {self.swapped[0]} and the oldest "
                f"{self.swapped[1]} exchanged ({where}); both stay marked verified")

    def clear(self) -> str:
        if not self.swapped:
            return "nothing swapped"
        self._swap(self.swapped)
        return f"payloads of {self.swapped[0]} and {self.swapped[1]} put back"


class LoseStore:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb = sb
        self.kept: dict[str, bytes] = {}

    def inject(self) -> str:
        objects = self.sb.store().objects
        client, bucket = objects.client, objects.bucket
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for key in keys:
            self.kept[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            client.delete_object(Bucket=bucket, Key=key)
        return f"dc-a's backup store lost: {len(keys)} objects deleted from s3://{bucket}"

    def clear(self) -> str:
        objects = self.sb.store().objects
        for key, body in self.kept.items():
            objects.client.put_object(Bucket=objects.bucket, Key=key, Body=body)
        said = (f"dc-a's backup store back: {len(self.kept)} objects put back in "
                f"s3://{objects.bucket}")
        self.kept = {}
        return said


class StopDnsServer:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb, self.name = sb, spec.server

    def inject(self) -> str:
        assert self.sb.bind is not None
        server = self.sb.bind.server(self.name)  # KeyError names the servers there are
        self.sb.bind.pause(self.name)
        return f"authoritative DNS server {self.name} ({server.address}:{server.port}, " \
               f"pid {server.pid}) stopped with SIGSTOP"

    def clear(self) -> str:
        assert self.sb.bind is not None
        self.sb.bind.resume(self.name)
        return f"DNS server {self.name} resumed (SIGCONT); it catches up by zone transfer"


class CutSsh:
    def __init__(self, sb: Sandbox, spec: FaultSpec):
        self.sb = sb

    def inject(self) -> str:
        sshd = self.sb.sshd
        assert sshd is not None and sshd.proc is not None
        pid = sshd.proc.pid
        sshd.stop()
        return f"dc-b database host's sshd (pid {pid}, port {sshd.port}) stopped: SSH cut"

    def clear(self) -> str:
        pid = self.sb.restart_sshd()
        return f"sshd on the dc-b database host started again (pid {pid})"


class Faults:
    """Several faults injected in order and cleared in reverse order."""

    def __init__(self, faults: list[Any]):
        self.faults = faults
        self.injected: list[Any] = []

    def inject(self) -> str:
        said = []
        for fault in self.faults:
            said.append(fault.inject())
            self.injected.append(fault)
        return "; ".join(said)

    def clear(self) -> str:
        said = []
        while self.injected:
            said.append(self.injected.pop().clear())
        return "; ".join(said) or "nothing to repair"


_CLASSES: dict[str, Any] = {"kill-app": KillApp, "slow-app": AppFault, "flap-app": AppFault,
                            "channel-down": AppFault, "kill-db": KillDb,
                            "corrupt-backup": CorruptBackup, "swap-payloads": SwapPayloads,
                            "lose-store": LoseStore,
                            "stop-dns-server": StopDnsServer,
                            "cut-ssh": CutSsh}


def build(specs: list[FaultSpec], sb: Sandbox) -> Faults:
    return Faults([_CLASSES[s.kind](sb, s) for s in specs])
