"""The reliability suite's tally, printed at the end of every run that includes it.

Reproduce with: .venv/bin/python -m pytest tests/reliability
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.reliability.sandbox import backups  # noqa: F401  (a session fixture)

TALLY: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    tr = terminalreporter
    tr.section("reliability summary")
    tr.write_line(f"kill points tried/passed:  {TALLY['kill_tried']}/{TALLY['kill_passed']}")
    tr.write_line(f"faults tried/survived:     {TALLY['fault_tried']}/{TALLY['fault_survived']}")
    tr.write_line(f"fuzz cases tried:          {TALLY['fuzz_cases']}")
    tr.write_line(f"injection cases tried/safe: {TALLY['injection_tried']}/"
                  f"{TALLY['injection_safe']} (hostile paths and data-set names over SSH)")
    tr.write_line(f"secrets leaked:            {TALLY['secrets_leaked']}"
                  f" (in {TALLY['secret_paths']} places checked)")
    tr.write_line(f"redaction cases tried/record intact: {TALLY['redaction_tried']}/"
                  f"{TALLY['redaction_intact']}")
    tr.write_line(f"schema-edge plans tried/handled: {TALLY['schema_tried']}/"
                  f"{TALLY['schema_handled']} ({TALLY['schema_accepted']} accepted ran)")
    tr.write_line(f"simulated schedules/violations: {TALLY['sim_schedules']}/"
                  f"{TALLY['sim_violations']}")
    tr.write_line("reproduce: .venv/bin/python -m pytest tests/reliability")
