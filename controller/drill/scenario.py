"""Drill scenarios: declarative files run against the sandbox of real services.

Owns the `DrillScenario` document (`kind: DrillScenario`, beside `kind: FailoverPlan`)
and running one: which plan template to use (`manifests/drills/plans/NAME.yaml`, or a
path) with which overrides, what the sandbox must hold (backups, rows), which faults to
inject (`drill.faults`), and what must hold afterwards (`drill.checks.WorldExpect`, how
the failover ends, the response level, RTO/RPO objectives). `run_scenario` brings the
sandbox up, renders the template with the sandbox's addresses and secret files into a
ready-to-run plan, runs the drill (`drill.runner`), tears the sandbox down whatever
happens, adds the teardown check (no process, no port left) and writes the reports.

Templates are plain plan YAML with `${name}` placeholders (`Sandbox.variables()`): a
string that is exactly one placeholder takes the variable's value whatever its type (a
list of nameservers, a secret reference); placeholders inside a longer string are
replaced by their text. Overrides are merged into the template before rendering;
`steps`, `services` and `backends` are merged by item name, e.g.
`overrides: {spec: {steps: {restore-db: {target: 10ms}}}}`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.drill import faults as fault_kinds
from controller.drill.checks import WorldChecks, WorldExpect
from controller.drill.databases import STANDBY_VARIABLES
from controller.drill.reports import write_reports
from controller.drill.runner import Echo, Expectations, run_drill
from controller.drill.sandbox import ROOT, Sandbox, SandboxOptions
from controller.journal import Journal
from controller.model import Phase
from controller.plan import Duration, FailoverPlan, Metadata, PlanError, parse_plan

SCENARIOS = ROOT / "manifests" / "drills"
TEMPLATES = SCENARIOS / "plans"
DEFAULT = "switch-to-backup-dc"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class ScenarioError(Exception):
    """A scenario that cannot be run; `problems` name the field and the fix."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__(f"{source}: " + "; ".join(problems))


class ScenarioExpect(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    phase: Literal["FailedOver", "Failed"] = Field(
        "FailedOver", description="how the failover run must end")
    level: int | None = Field(None, ge=1, le=4, description="the run's response level")
    failed_steps: dict[str, str] = Field(
        default_factory=dict, alias="failedSteps",
        description="step -> regular expression its error must match")
    failback: bool = Field(True, description="request a failback after the repair")
    rto: Duration | None = Field(None, description="default: the plan's largest step target")
    rpo: Duration | None = Field(None, description="default: the restore target's rpo")
    after_failover: WorldExpect = Field(default_factory=WorldExpect, alias="afterFailover")
    after_failback: WorldExpect = Field(default_factory=WorldExpect, alias="afterFailback")


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    description: str = ""
    plan: str = Field(description="plan template: a name in manifests/drills/plans/ or a "
                      "path relative to the scenario file")
    overrides: dict[str, Any] = Field(default_factory=dict)
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
    faults: list[fault_kinds.FaultSpec] = Field(min_length=1)
    warmup: Duration = Field(1.0, description="healthy probing before the fault")
    expect: ScenarioExpect = Field(default_factory=ScenarioExpect)

    @model_validator(mode="after")
    def _standby_checks_need_a_standby(self) -> ScenarioSpec:
        e = self.expect
        if (e.after_failover.promoted or e.after_failback.database_home) \
                and not self.sandbox.standby:
            raise ValueError("expect: `promoted` and `databaseHome` measure dc-b's standby: "
                             "set `sandbox: {standby: true}`")
        return self


class DrillScenario(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["failover.example.io/v1alpha1"] = Field(
        "failover.example.io/v1alpha1", alias="apiVersion")
    kind: Literal["DrillScenario"] = "DrillScenario"
    metadata: Metadata
    spec: ScenarioSpec

    @property
    def name(self) -> str:
        return self.metadata.name


def find(name_or_path: str) -> Path:
    """A scenario file by path, or by name in manifests/drills/."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return path
    return SCENARIOS / f"{name_or_path}.yaml"


def document_kind(path: Path) -> str | None:
    """The `kind:` of a YAML document (None if unreadable: the loader reports why)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def load_scenario(path: Path) -> tuple[DrillScenario, Path]:
    """The scenario and its plan template's path; every problem names its field."""
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
        scenario = DrillScenario.model_validate(data)
    except OSError as exc:
        raise ScenarioError(source, [f"(file): cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, [f"(document): not valid YAML: {exc}"]) from None
    except ValidationError as err:
        raise ScenarioError(source, [
            f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
            for e in err.errors()]) from None
    ref = scenario.spec.plan
    template = (path.parent / ref) if ref.endswith((".yaml", ".yml")) else TEMPLATES / \
        f"{ref}.yaml"
    if not template.exists():
        known = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.yaml")))
        raise ScenarioError(source, [f"spec.plan: no template {template} (templates: {known})"])
    return scenario, template


def merge(base: Any, patch: Any, where: str = "overrides") -> Any:
    """Deep-merge `patch` into `base`; lists of named items are patched by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            base[key] = merge(base[key], value, f"{where}.{key}") if key in base else value
        return base
    if isinstance(base, list) and isinstance(patch, dict) and all(
            isinstance(item, dict) and "name" in item for item in base):
        named = {item["name"]: item for item in base}
        for key, value in patch.items():
            if key not in named:
                raise PlanError(where, [f"{where}: no item named {key!r} (have: "
                                        f"{', '.join(named)})"])
            merge(named[key], value, f"{where}.{key}")
        return base
    return patch


def render(value: Any, variables: dict[str, Any], where: str = "") -> Any:
    """Replace `${name}` placeholders (see the module docstring)."""
    if isinstance(value, dict):
        return {k: render(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    for name in _PLACEHOLDER.findall(value):
        if name not in variables:
            hint = ("; a standby's are there with `sandbox: {standby: true}` in the scenario"
                    if name in STANDBY_VARIABLES else "")
            raise PlanError("template", [f"{where.lstrip('.')}: unknown placeholder "
                                         f"${{{name}}}{hint}; the sandbox offers: "
                                         f"{', '.join(sorted(variables))}"])
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return copy.deepcopy(variables[whole.group(1)])
    return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value)


def build_plan(scenario: DrillScenario, template: Path, variables: dict[str, Any], *,
               name: str | None = None) -> tuple[FailoverPlan, dict[str, Any]]:
    data = yaml.safe_load(template.read_text())
    data = merge(data, copy.deepcopy(scenario.spec.overrides))
    data.setdefault("metadata", {})["name"] = name or scenario.name
    data = render(data, variables)
    return parse_plan(data, str(template)), data


def _expectations(scenario: DrillScenario) -> Expectations:
    e = scenario.spec.expect
    return Expectations(phase=Phase(e.phase), level=e.level, failed_steps=e.failed_steps,
                        failback=e.failback, rto=e.rto, rpo=e.rpo)


def run_scenario(path: Path, journal: Journal, out: Path, *, echo: Echo = print,
                 sandbox_dir: Path | None = None) -> dict[str, Any]:
    """Bring the sandbox up, run the scenario, tear down, judge and write the reports."""
    scenario, template = load_scenario(path)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("paramiko").setLevel(logging.WARNING)  # a line per SSH connection
    out.mkdir(parents=True, exist_ok=True)
    manifest_file = out / "sandbox.json"
    manifest: dict[str, Any] = {}
    verdict: dict[str, Any] | None = None
    # every drill is a new world, so its plan gets a name of its own: the journal keeps
    # each drill's runs apart, and one that ended Failed never blocks the next
    name = f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    sb = Sandbox(scenario.spec.sandbox, base=sandbox_dir, echo=echo,
                 audit=functools.partial(journal.audit, plan=name))
    if echo:
        echo(f"scenario {scenario.name}: {scenario.spec.description.strip().splitlines()[0]}"
             if scenario.spec.description.strip() else f"scenario {scenario.name}")
        echo("starting the sandbox...")
    try:
        with sb:
            manifest = sb.manifest()
            manifest_file.write_text(json.dumps(manifest, indent=2))
            plan, data = build_plan(scenario, template, sb.variables(), name=name)
            text = yaml.safe_dump(data, sort_keys=False)
            sb.plan_file.write_text(text)
            (out / "plan.yaml").write_text(text)
            if echo:
                for line in sb.describe():
                    echo(line)
                echo(f"  {'plan':<8} {sb.plan_file} (copy in {out / 'plan.yaml'})")
            world = WorldChecks(sb, plan, after_failover=scenario.spec.expect.after_failover,
                                after_failback=scenario.spec.expect.after_failback)
            verdict = run_drill(plan, journal, out, echo=echo,
                                fault=fault_kinds.build(scenario.spec.faults, sb),
                                expect=_expectations(scenario), world=world,
                                warmup=scenario.spec.warmup, write=False,
                                stop=sb.interrupted)
            manifest = sb.manifest()
    finally:
        manifest["teardown"] = sb.teardown
        manifest_file.write_text(json.dumps(manifest, indent=2))
    assert verdict is not None
    down = sb.teardown
    verdict["scenario"] = {"name": scenario.name, "file": str(path),
                           "plan": scenario.spec.plan,
                           "description": scenario.spec.description.strip(),
                           "faults": [f.model_dump(mode="json") for f in scenario.spec.faults]}
    verdict["sandbox"] = manifest
    left = down.get("pidsAlive", []) + down.get("tcpListening", []) + down.get("udpBound", [])
    others = (f"{len(down['leftAlone'])} other processes naming the directory left "
              "running; " if down.get("leftAlone") else "")
    detail = (f"{len(down.get('stoppedPids', []))} processes stopped by PID in "
              f"{down.get('seconds', 0):.2f} s, {len(down.get('orphansStopped', []))} "
              f"leftovers swept; {others}" + ("no process or port left" if down.get("clean")
                                              else f"LEFT BEHIND: {left} {down.get('errors')}"))
    verdict["checks"].append({"check": "teardown left nothing behind", "ok": bool(
        down.get("clean")), "detail": detail, "stage": "teardown"})
    if echo:
        echo(f"{'PASS' if down.get('clean') else 'FAIL'} teardown left nothing behind: "
             f"{detail}")
    verdict["passed"] = all(c["ok"] for c in verdict["checks"])
    write_reports(out, verdict, records=plan.spec.records)
    if echo:
        failed = [c["check"] + (f" ({c['detail']})" if "targets" in c["check"] else "")
                  for c in verdict["checks"] if not c["ok"]]
        echo(f"drill {scenario.name} " + (f"FAILED: {'; '.join(failed)}" if failed else
                                          "PASSED"))
        echo(f"report: {out / 'report.html'} (also report.md, verdict.json, "
             "drill.junit.xml)")
    return verdict


def run_for_cli(path: Path, journal: Journal, out: Path, *, echo: Echo,
                sandbox_dir: Path | None = None) -> dict[str, Any]:
    """`failoverctl drill SCENARIO`: errors become the CLI's exit codes (2: a bad scenario
    or template, 1: the sandbox or the drill broke, 130/143: interrupted by a signal),
    each with one line saying why; the sandbox is always torn down first."""
    from controller.drill.runner import Interrupted
    from controller.drill.servers.base import ServerError

    def fail(message: str, code: int) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)

    try:
        return run_scenario(path, journal, out, echo=echo, sandbox_dir=sandbox_dir)
    except ScenarioError as exc:
        print(f"{exc.source}: invalid scenario", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(2)
    except PlanError as exc:
        fail(f"{path}: the rendered plan is invalid: {'; '.join(exc.problems)}", 2)
    except Interrupted as exc:
        fail(f"drill interrupted by {exc.signame}; the sandbox was torn down "
             f"(see {out / 'sandbox.json'})", 143 if exc.signame == "SIGTERM" else 130)
    except KeyboardInterrupt:
        fail("drill interrupted; the sandbox was torn down", 130)
    except (ServerError, Exception) as exc:
        fail(f"drill {path} broke: {type(exc).__name__}: {exc}; the sandbox was torn down "
             f"(see {out / 'sandbox.json'})", 1)
    raise AssertionError("unreachable")


def up(name_or_path: str = DEFAULT, *, sandbox_dir: Path | None = None) -> None:
    """`python -m controller.drill.scenario [SCENARIO]`: bring the scenario's sandbox up,
    write its plan, print what runs where, and wait for Ctrl-C (then tear it all down).
    Meanwhile the plan runs against the real services, e.g. `failoverctl run PLAN`."""
    from controller.drill.runner import Interrupted

    scenario, template = load_scenario(find(name_or_path))
    try:
        with Sandbox(scenario.spec.sandbox, base=sandbox_dir) as sb:
            _, data = build_plan(scenario, template, sb.variables())
            sb.plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
            for line in sb.describe():
                print(line)
            print(f"  {'plan':<8} {sb.plan_file}\nready: try `.venv/bin/failoverctl ready "
                  f"{sb.plan_file}`; Ctrl-C tears everything down", flush=True)
            while True:
                time.sleep(3600)
    except Interrupted as exc:
        print(f"{exc.signame}: torn down ({'clean' if sb.teardown.get('clean') else sb.teardown})")


if __name__ == "__main__":
    up(*sys.argv[1:2])
