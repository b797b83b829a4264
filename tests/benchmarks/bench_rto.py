"""End-to-end RTO of the default sandbox drill, per step, against the sum of the floors.

    .venv/bin/python tests/benchmarks/bench_rto.py [RUNS]     # script (default 1 run)
    .venv/bin/python -m pytest tests/benchmarks/bench_rto.py -s

Runs the default scenario (`switch-to-backup-dc`) in the sandbox, in this process, and
while that sandbox is still up measures by hand, on the same servers, what each part of
the recovery cannot go below:

- detection floor: probe interval x consecutive failures (the earliest the policy can
  call a service down), and the plan's dwell on top (it waits that long on purpose);
- DNS floor: one TSIG-signed update sent with bare dnspython, then every authoritative
  server asked until it answers the new value (what "DNS verify" must wait for);
- restore floor: the very bytes of the backup the drill restored, by hand: streamed from
  moto's S3 and decrypted (the payload is AES-256-GCM; there is no shorter way to the
  files), `tar -x` into an empty directory on this host (no SSH), `pg_ctl start -w`, one
  `count(*)`. No pg_verifybackup, no validation queries, no SSH round trips.

It prints the drill's RTO (fault injected -> last failover step done) broken down into
detection, trip (dwell) and each step, against the sum of the floors, and the ratio. The
figures are printed, never asserted: the host is shared, so they vary run to run.
"""

from __future__ import annotations

import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.tsig  # noqa: E402
import dns.update  # noqa: E402

from controller.drill import faults  # noqa: E402
from controller.drill.checks import WorldChecks  # noqa: E402
from controller.drill.reports import PHASES  # noqa: E402
from controller.drill.runner import Expectations, run_drill  # noqa: E402
from controller.drill.sandbox import ZONE, Sandbox  # noqa: E402
from controller.drill.scenario import DEFAULT, SCENARIOS, build_plan, load_scenario  # noqa: E402
from controller.drill.servers.base import free_port  # noqa: E402
from controller.drill.servers.postgres import PostgresServer, as_user, give_to  # noqa: E402
from controller.journal import Journal  # noqa: E402
from controller.model import Phase  # noqa: E402


def dns_floor(sb: Sandbox) -> float:
    """A signed update of a fresh name, then every server polled until it answers it."""
    bind = sb.bind
    assert bind is not None
    key = dns.tsig.Key(bind.key_name, bind.secret, bind.algorithm)
    name, value = f"floor-{time.monotonic_ns()}.{ZONE}", "203.0.113.7"
    update = dns.update.UpdateMessage(ZONE, keyring=key)
    update.replace(name, 60, "A", value)
    start = time.perf_counter()
    dns.query.tcp(update, bind.primary.address, port=bind.primary.port, timeout=5)
    for server in bind.servers:
        while True:
            query = dns.message.make_query(name, "A")
            query.flags &= ~dns.flags.RD
            reply = dns.query.udp(query, server.address, port=server.port, timeout=2)
            if any(r.to_text() == value for rrset in reply.answer for r in rrset):
                break
            time.sleep(0.0005)
    return time.perf_counter() - start


def restore_floor(sb: Sandbox, backup_id: str) -> dict[str, float]:
    """The same backup's bytes restored by hand on this host; phases in seconds."""
    import subprocess

    store = sb.store()
    backup = next(b for b in store.list(dataset="orders") if b.id == backup_id)
    base = Path(tempfile.mkdtemp(prefix="by-hand-", dir=sb.scratch()))
    base.chmod(0o755)
    server = PostgresServer(base, port=free_port())
    give_to(server.data)
    give_to(server.sock, mode=0o755)
    phases: dict[str, float] = {}
    try:
        t = time.perf_counter()
        tar = subprocess.Popen(as_user(["tar", "-x", "-f", "-", "-C", str(server.data)]),
                               stdin=subprocess.PIPE)
        assert tar.stdin is not None
        with store.open_payload(backup) as reader:
            while chunk := reader.read(1 << 20):
                tar.stdin.write(chunk)
        tar.stdin.close()
        assert tar.wait() == 0
        phases["fetch+decrypt+untar"] = time.perf_counter() - t
        t = time.perf_counter()
        server.start()
        phases["pg_ctl start"] = time.perf_counter() - t
        t = time.perf_counter()
        count = server.psql("SELECT count(*) FROM orders")
        phases["first query"] = time.perf_counter() - t
        assert count == str(sb.options.rows)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return phases


def one_run(workdir: Path) -> dict[str, Any]:
    scenario, template = load_scenario(SCENARIOS / f"{DEFAULT}.yaml")
    journal = Journal(workdir / "journal.db")
    with Sandbox(scenario.spec.sandbox, echo=None,
                 audit=functools.partial(journal.audit, plan=scenario.name)) as sb:
        plan, _ = build_plan(scenario, template, sb.variables())
        expect = scenario.spec.expect
        verdict = run_drill(
            plan, journal, workdir / "out", echo=None,
            fault=faults.build(scenario.spec.faults, sb),
            expect=Expectations(phase=Phase(expect.phase), level=expect.level),
            world=WorldChecks(sb, plan, after_failover=expect.after_failover,
                              after_failback=expect.after_failback),
            warmup=scenario.spec.warmup, write=False, stop=sb.interrupted)
        assert verdict["passed"], [c for c in verdict["checks"] if not c["ok"]]
        restored = next(s for s in verdict["failover"]["steps"] if s["action"] == "restore")
        floors = {"dns": dns_floor(sb),
                  "restore": restore_floor(sb, restored["evidence"]["backup"])}
    journal.close()
    service = plan.spec.services[0]
    floors["detection"] = service.interval * plan.spec.trigger.consecutive_failures
    floors["dwell"] = plan.spec.trigger.dwell
    return {"verdict": verdict, "floors": floors, "startup": sb.timings,
            "teardown": sb.teardown["seconds"]}


def report(result: dict[str, Any]) -> dict[str, float]:
    verdict, floors = result["verdict"], result["floors"]
    timeline, steps = verdict["timeline"], verdict["failover"]["steps"]
    restore_floor_s = sum(floors["restore"].values())
    floor = {"dns-cutover": floors["dns"], "restore-db": restore_floor_s}
    detection = timeline["detectedAt"] - timeline["injectedAt"]
    trip = timeline["trippedAt"] - timeline["detectedAt"]
    rto = steps[-1]["finishedAt"] - timeline["injectedAt"]
    floor_sum = floors["detection"] + floors["dns"] + restore_floor_s
    print(f"\nsandbox up in {result['startup']['total']:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in result['startup'].items() if k != 'total')})"
          f"; torn down in {result['teardown']:.2f} s")
    print(f"{'part':<22}{'drill':>10}{'floor':>10}{'ratio':>8}  floor is")
    print(f"{'detection':<22}{detection:>9.3f}s{floors['detection']:>9.3f}s"
          f"{detection / floors['detection']:>7.1f}x  probe interval x consecutive failures")
    print(f"{'trip (dwell)':<22}{trip:>9.3f}s{floors['dwell']:>9.3f}s"
          f"{trip / floors['dwell']:>7.1f}x  the plan's dwell (a wait on purpose)")
    previous = timeline["trippedAt"]
    gaps = 0.0
    for s in steps:
        gaps += s["startedAt"] - previous
        previous = s["finishedAt"]
        f = floor.get(s["name"])
        what = {"dns-cutover": "signed update + answer on every server, by hand",
                "restore-db": "same bytes: S3 -> decrypt -> tar -> pg_ctl -> count(*)"}
        print(f"{s['name']:<22}{s['elapsedSeconds']:>9.3f}s" + (
            f"{f:>9.3f}s{s['elapsedSeconds'] / f:>7.1f}x  {what[s['name']]}" if f else
            f"{'-':>10}{'-':>8}"))
    print(f"{'engine between steps':<22}{gaps:>9.3f}s")
    phases = result["floors"]["restore"]
    ev = next(s for s in steps if s["name"] == "restore-db")["evidence"]
    print("restore by hand:  " + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
    order = sorted(ev["phases"].items(), key=lambda kv: PHASES.index(kv[0])
                   if kv[0] in PHASES else len(PHASES))
    print("restore in drill: " + ", ".join(f"{k} {v:.3f} s" for k, v in order)
          + f" (+ SSH round trips; {ev['seconds']:.3f} s in all)")
    print(f"{'RTO inject->done':<22}{rto:>9.3f}s{floor_sum:>9.3f}s{rto / floor_sum:>7.1f}x  "
          "detection + DNS + restore floors")
    with_dwell = floor_sum + floors["dwell"]
    print(f"{'  with the dwell':<22}{rto:>9.3f}s{with_dwell:>9.3f}s{rto / with_dwell:>7.1f}x"
          "  ... + the dwell the plan asks for")
    return {"rto": rto, "floors": floor_sum, "ratio": rto / floor_sum}


def run(runs: int) -> list[dict[str, float]]:
    figures = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-rto-") as tmp:
            print(f"\nrun {i + 1}/{runs}: drill {DEFAULT} in the sandbox")
            figures.append(report(one_run(Path(tmp))))
    if runs > 1:
        print(f"\nmedian over {runs} runs: RTO "
              f"{statistics.median(f['rto'] for f in figures):.3f} s, floors "
              f"{statistics.median(f['floors'] for f in figures):.3f} s, ratio "
              f"{statistics.median(f['ratio'] for f in figures):.1f}x")
    return figures


@pytest.mark.benchmark
def test_rto_figures() -> None:
    [figures] = run(1)
    assert figures["rto"] > 0  # figures are printed; no timing is asserted


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
