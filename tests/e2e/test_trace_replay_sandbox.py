"""A real incident, replayed: the trace exported from a sandbox drill trips `simulate` as
the live controller tripped.

The drill (`failoverctl drill api-outage-level-2`: dc-a's web and API channels answer
after 1 s, beyond the probes' 300 ms timeout, while the hotline works) runs the reconcile
loop against real servers; the controller records the samples it decided on in the
journal. `failoverctl trace export RUN --plan PLAN` writes the run's window as a trace,
and `failoverctl simulate PLAN --trace FILE`, at its default one-second tick, must trip
at the level the run started at, reach the level the run reached, and trip at the time
the journal recorded the trip (relative to the trace's start) within one probe interval:

- `simulate` hands each sample to the policy when its probe answered (start + latency,
  here a timeout), and runs a cycle at once on each news (a failed sample, or a service's
  first good one after failed ones) as the scheduler wakes the live loop: detection (the
  first decision below the floor) happens on the same sample at the same instant;
- the trip then waits for the dwell to pass and for the next cycle: live, the next news
  or the loop's own tick (the drill ticks at the shortest probe interval); in the replay,
  the next news or its one-second tick. The failing channels keep failing, so a news
  arrives within one probe interval after the dwell in both: the two trips are at most
  one probe interval (the slowest service's, 300 ms) apart.

The drill's scenario is not this test's concern (its verdict is `test_sandbox_scenarios`'s);
only that the controller detected the fault and failed over.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from controller.journal import Journal
from controller.plan import load_plan
from tests.e2e.test_sandbox import checks, drill, verdict_of

ROOT = Path(__file__).resolve().parents[2]


def cli(journal: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "controller", "--journal", str(journal),
                          *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_a_trace_exported_from_a_sandbox_drill_replays_to_the_same_trip_and_level(
        tmp_path: Path) -> None:
    res = drill(tmp_path, "api-outage-level-2")
    out, journal_path = tmp_path / "out", tmp_path / "journal.db"
    assert (out / "verdict.json").exists(), res.stdout[-4000:] + res.stderr[-4000:]
    assert checks(verdict_of(out))["failed over"]["ok"], res.stdout[-4000:]

    journal = Journal(journal_path)
    [run] = [r for r in journal.runs() if r.kind == "failover"]
    assert run.requested_by == "controller"  # the policy tripped on real probes
    trip = next(d for d in journal.decisions(run.plan) if d["action"] == "trip")
    plan_file = out / "plan.yaml"  # the rendered plan the drill ran
    interval = max(s.interval for s in load_plan(plan_file).spec.services)

    trace = tmp_path / "incident.jsonl"
    cli(journal_path, "trace", "export", run.id, "--plan", str(plan_file), "--to", str(trace))
    start = json.loads(trace.read_text().splitlines()[0])["start"]
    [result] = json.loads(cli(journal_path, "simulate", str(plan_file), "--trace", str(trace),
                              "-o", "json"))
    assert result["passed"], result["problems"]  # the label the export wrote
    first = result["trips"][0]
    recorded = trip["at"] - start
    assert abs(first["atSeconds"] - recorded) <= interval, (first, recorded,
                                                            result["decisions"])
    assert first["level"] == trip["level"]  # the level the run started at
    assert first["peakLevel"] == run.level  # and the level it reached
