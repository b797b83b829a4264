"""`failoverctl` against FailoverPlan resources: the CLI's cluster client.

Owns what `failover`, `failback`, `approve`, `done` and `status` do when PLAN names a
resource — `fop/NAME` (kubectl's TYPE/NAME form), with `-n NS` and `--kubeconfig` —
instead of a plan file. In this mode the CLI never touches the world itself: the
operator in the cluster acts, and this module talks to it only through the resource,
via kube.py. Why each rule:

- **Requests are the operator's annotations** (`request`, `reason`, `requested-by`,
  `level`; `approve` + `approved-by`; `done` + `done-by`: the same ones `kubectl
  annotate` sets, see operator.py), written against the resourceVersion just read, and
  refused while an earlier annotation of the same kind is still unclaimed, so nobody's
  request is ever overwritten.
- **Who asks is who the cluster authenticated**: the `*-by` annotations carry the name
  the API server knows the user by (a SelfSubjectReview, Kubernetes 1.28+), which is
  what the admission policy (manifests/deploy/admission-policy.yaml) requires. A `--as`
  that differs is written as given, with a warning: where the policy is installed the API
  server refuses it with its own message; this CLI cannot tell whether it is (people may
  not read admission policies, and a binding may only warn). An API server that does
  not say who you are (no SelfSubjectReview) gets `--as`, else the login, saying so.
- **Progress is the status**: the operator mirrors every step into `.status` before it
  goes on; this module watches the one resource (a field-selected watch, relisting on
  410 Gone, backing off up to 2 s while watches end with no change, so a proxy that
  closes them at once cannot make it spin) and renders each change with console.py,
  exactly like the journal mode, then prints the same run summary and returns the same
  exit codes (0 done, 1 Failed, 4 waiting for a person, an approval, or still running
  when `--wait` ran out).
- **Which run is ours**: the operator claims (removes) an annotation before acting on
  it, so its disappearance proves nothing about the run. A request is followed until a
  *new* run of its kind shows up in the status; an approval until the run no longer
  waits for it.
- **The preview reads only**: what each step does, in order, with its target, comes
  from the resource's spec; readiness is what the operator last checked. The live
  "would change" of the journal mode needs the backends' credentials, which live in the
  cluster, so it is not shown here. `--dry-run` stops after the preview, having written
  nothing.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from controller import console
from controller import kube as k8s
from controller.annotations import (
    A_APPROVE,
    A_APPROVED_BY,
    A_BY,
    A_DONE,
    A_DONE_BY,
    A_LEVEL,
    A_REASON,
    A_REQUEST,
)
from controller.console import EXIT_FAILED, EXIT_INPUT, EXIT_OK, EXIT_WAITING, CliError
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.failback import may_have_written
from controller.model import PermanentError
from controller.plan import FailoverPlan, PlanError, parse_plan
from controller.records.drills import FAILBACK_REASON, FAILOVER_REASON
from controller.registry import find_step_kind
from controller.report import summarize

Obj = dict[str, Any]
FOLLOW_BACKOFF_MIN, FOLLOW_BACKOFF_MAX = 0.1, 2.0  # seconds between watches that bring nothing
TYPES = {"fop", "failoverplan", "failoverplans", f"failoverplan.{GROUP}", f"{PLURAL}.{GROUP}"}


def is_resource(ref: str | None) -> bool:
    """`fop/NAME` (or failoverplan/NAME, ...) that is not an existing file."""
    if not ref or Path(ref).exists():
        return False
    kind, sep, name = ref.partition("/")
    return bool(sep and name and "/" not in name and kind.lower() in TYPES)


def options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`-n/--namespace` and `--kubeconfig`, for commands whose PLAN may be `fop/NAME`."""
    fn = click.option("--kubeconfig", type=click.Path(dir_okay=False),
                      help="with fop/NAME: kubeconfig file (default: $KUBECONFIG, "
                           "~/.kube/config, or in-cluster in a pod)")(fn)
    return click.option("-n", "--namespace",
                        help="with fop/NAME: the plan's namespace (default: the "
                             "kubeconfig context's, else default)")(fn)


def _errors(fn: Callable[..., int]) -> Callable[..., int]:
    """Kubernetes errors become CliErrors: exit 2 for what retrying cannot fix (not
    found, forbidden, bad kubeconfig), 1 for the rest (API server unavailable)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return fn(*args, **kwargs)
        except (k8s.KubeError, PermanentError) as exc:
            raise CliError(str(exc), EXIT_INPUT if isinstance(exc, PermanentError)
                           else EXIT_FAILED) from None

    return wrapper


@dataclass
class Resource:
    """One FailoverPlan resource, as the CLI reads, annotates and follows it."""

    kube: k8s.Kube
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{KIND} {self.namespace}/{self.name}"

    @property
    def where(self) -> str:
        """How a follow-up command names this plan."""
        return f"--plan fop/{self.name} -n {self.namespace}"

    def get(self) -> Obj:
        return self.kube.get(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def plan(self, obj: Obj) -> FailoverPlan:
        try:
            return parse_plan({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                               "metadata": {"name": self.name}, "spec": obj.get("spec", {})},
                              str(self))
        except PlanError as err:
            raise CliError(f"{self} is not a valid plan: " + "; ".join(err.problems)) from None

    def annotate(self, notes: dict[str, str], pending: str) -> Obj:
        """Set `notes` with a compare-and-swap write, unless `pending` is still unclaimed."""

        def mutate(obj: Obj) -> None:
            have = obj["metadata"].get("annotations") or {}
            if pending in have:
                raise CliError(f"{self} still has an unclaimed {pending}={have[pending]!r}: "
                               "the operator has not acted on it yet (is it running?); wait, "
                               f"or withdraw it: kubectl annotate -n {self.namespace} fop "
                               f"{self.name} {pending}-")
            obj["metadata"]["annotations"] = {**have, **notes}

        return self.kube.update(GROUP, VERSION, self.namespace, PLURAL, self.name, mutate)

    def withdraw(self, notes: dict[str, str]) -> bool:
        """Take back a request the operator has not claimed: remove exactly `notes`, with a
        compare-and-swap write, while every one still has the value set. False (nothing
        written) when any is gone or changed: the operator claimed it and acts on it."""

        class Claimed(Exception):
            pass

        def mutate(obj: Obj) -> None:
            have = obj["metadata"].get("annotations") or {}
            if any(have.get(k) != v for k, v in notes.items()):
                raise Claimed
            obj["metadata"]["annotations"] = {k: v for k, v in have.items() if k not in notes}

        try:
            self.kube.update(GROUP, VERSION, self.namespace, PLURAL, self.name, mutate)
        except Claimed:
            return False
        return True

    def follow(self, settled: Callable[[Obj], bool], seen: Callable[[Obj], None],
               deadline: float) -> Obj:
        """Watch the resource, calling `seen` on each version, until `settled` or the
        deadline; returns the last version seen."""
        obj = self.get()
        seen(obj)
        rv = obj["metadata"]["resourceVersion"]
        pause = 0.0  # grows while watches bring nothing (ended at once, refused, Gone)
        while not settled(obj) and time.monotonic() < deadline:
            if pause:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    break
            changed = False
            try:
                for event in self.kube.watch(
                        GROUP, VERSION, self.namespace, PLURAL, resource_version=rv,
                        timeout_seconds=max(1, min(60, int(deadline - time.monotonic()))),
                        field_selector=f"metadata.name={self.name}"):
                    rv = event.resource_version or rv
                    if event.type == "BOOKMARK":
                        continue
                    if event.type == "DELETED":
                        raise CliError(f"{self} was deleted while being followed", EXIT_FAILED)
                    obj, changed = event.object, True
                    seen(obj)
                    if settled(obj) or time.monotonic() >= deadline:
                        break
            except k8s.Gone:  # the watch window moved on: read afresh, watch from there
                obj = self.get()
                seen(obj)
                rv = obj["metadata"]["resourceVersion"]
            except k8s.Unavailable:
                pass  # the API server is away: try again after the pause below
            # a watch that ends without a change (a proxy closing it at once, say) must not
            # turn into a busy loop of watch calls: back off, bounded, until one brings one
            pause = 0.0 if changed else min(FOLLOW_BACKOFF_MAX, max(FOLLOW_BACKOFF_MIN,
                                                                    pause * 2))
        return obj


AUTHN = "authentication.k8s.io"


def identity(known: str | None, actor: str, *, claimed: bool, by: str) -> tuple[str, str]:
    """(the name annotation `by` carries, a line that says why when it is not simply the
    authenticated one, else ""). `known`: the name the cluster authenticated (None: it
    did not say); `actor`: `--as` when `claimed`, else the login."""
    if known is None:
        return actor, (f"note: the API server does not say who you are (no "
                       f"{AUTHN}/v1 selfsubjectreviews; Kubernetes 1.28+): {by} names "
                       f"{actor} (from {'--as' if claimed else 'your login'})")
    if not claimed or actor == known:
        return known, ""
    return actor, (f"warning: the cluster knows you as {known}, but --as says {actor}: {by} "
                   f"names {actor}, which the admission policy (manifests/deploy/"
                   "admission-policy.yaml) refuses where it is installed; leave out --as "
                   "to be named as the cluster knows you")


def _who(res: Resource, actor: str, claimed: bool, by: str) -> str:
    """The name for annotation `by`, saying on stderr why when it is not the one the
    cluster authenticated."""
    who, why = identity(res.kube.whoami(), actor, claimed=claimed, by=by)
    if why:
        click.echo(why, err=True)
    return who


def connect(ref: str, namespace: str | None, kubeconfig: str | None) -> Resource:
    conn = k8s.KubeConnection(kubeconfig=kubeconfig)
    return Resource(k8s.connect(conn), namespace or k8s.default_namespace(conn),
                    ref.partition("/")[2])


def run_of(obj: Obj) -> Obj | None:
    """The status's current (or last) run with its steps, without the step definitions."""
    run = (obj.get("status") or {}).get("run")
    return {k: v for k, v in run.items() if k != "definition"} if run else None


def _annotations(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


def _changes(plan: FailoverPlan, status: Obj, kind: str) -> list[Obj]:
    if kind == "failback":
        last = status.get("run") or {}
        if last.get("kind") != "failover" or last.get("finishedAt") is None:
            return []
        steps = last.get("steps", [])
        promoted = [s for s in steps if s["action"] == "promote"
                    and "standbyBefore" in (s.get("evidence") or {})]
        database = [{"name": f"failback-{s['name']}", "action": "db-failback",
                     "change": f"bring the database home first: rebuild "
                               f"{plan.spec.sites.primary.name} as the standby of the node "
                               f"{s['name']} promoted, catch up, switch over"}
                    for s in promoted[-1:]]
        return database + [
            {"name": f"revert-{s['name']}", "action": "revert",
             "change": f"restore the original saved before {s['name']}: "
                       f"{(s.get('evidence') or {}).get('before')}"}
            for s in reversed(steps)
            if may_have_written(s["action"], s["status"], s.get("evidence") or {})]
    return [{"name": s.name, "action": s.action, "target": s.target, "change": "-",
             "does": console.does(plan, s)} for s in plan.spec.steps]


def _finish(res: Resource, run: Obj, output: str) -> int:
    steps = run.get("steps", [])
    if output == "json":
        click.echo(json.dumps({"plan": res.name, "namespace": res.namespace,
                               "run": {k: v for k, v in run.items() if k != "steps"},
                               "steps": steps, "summary": summarize(run, steps)},
                              indent=2, sort_keys=True, default=str))
    else:
        click.echo(console.summary(run, steps, res.where))
    return console.exit_code(run)


class Withdrawn(CliError):
    """The request was taken back before the operator claimed it: nothing was done."""


@_errors
def request(ref: str, namespace: str | None, kubeconfig: str | None, *, kind: str,
            reason: str, actor: str, level: int | None, yes: bool, dry_run: bool,
            output: str, wait: float, withdraw: bool = False, claimed: bool = True) -> int:
    """Preview, confirm, annotate the request, then follow the operator's run. With
    `withdraw`, a request still unclaimed when following is interrupted or `--wait` runs
    out is taken back (`Withdrawn`), so the operator never acts on it unattended later.
    `actor` is `--as` when `claimed`, else the login (see `identity`)."""
    res = connect(ref, namespace, kubeconfig)
    obj = res.get()
    plan = res.plan(obj)
    status = obj.get("status") or {}
    changes = _changes(plan, status, kind)
    ready = (status.get("readiness") or None) if kind == "failover" else None
    if output == "text":
        sites = plan.spec.sites
        console.show_preflight(f"{kind} of {res}: {sites.primary.name} -> {sites.backup.name}"
                               if kind == "failover" else f"failback of {res}", changes, ready)
    if dry_run:
        click.echo(json.dumps({"dryRun": True, "plan": res.name, "namespace": res.namespace,
                               "steps": changes, "readiness": ready}, indent=2, default=str)
                   if output == "json" else "dry run: nothing was changed")
        return EXIT_OK
    actor = _who(res, actor, claimed, A_BY)  # said before the question
    console.confirm(kind, str(res), yes)
    before = (status.get("run") or {}).get("id")
    notes = {A_REQUEST: kind, A_REASON: reason, A_BY: actor}
    if level is not None and kind == "failover":
        notes[A_LEVEL] = str(level)
    deadline = time.monotonic() + wait
    progress = console.Progress()
    announced: list[str] = []

    def ours(o: Obj) -> Obj | None:
        run = run_of(o)
        return run if run and run["id"] != before and run["kind"] == kind else None

    def seen(o: Obj) -> None:
        run = ours(o)
        if run is None or output != "text":
            return
        if not announced:
            announced.append(run["id"])
            click.echo(f"{kind} of {plan.name} requested by {actor}: run {run['id']}")
        progress.show(run.get("steps", []))

    def settled(o: Obj) -> bool:
        run = ours(o)
        return run is not None and (run.get("finishedAt") is not None
                                    or run["phase"] == "AwaitingApproval")

    written = False
    try:
        res.annotate(notes, pending=A_REQUEST)
        written = True
        obj = res.follow(settled, seen, deadline)
    except BaseException as exc:  # interrupted: take the request back if nobody acts on it
        if withdraw and (written or isinstance(exc, KeyboardInterrupt)):
            _withdraw(res, notes, kind, exc)
        raise
    run = ours(obj)
    if run is None:
        if withdraw:
            _withdraw(res, notes, kind, None, f"was not picked up within {wait:g} s (is "
                      f"`failoverctl operator` running for namespace {res.namespace}?)")
        state = "still unclaimed" if A_REQUEST in _annotations(obj) else "claimed"
        raise CliError(f"the {kind} request was not picked up within {wait:g} s (annotation "
                       f"{A_REQUEST} {state}): is `failoverctl operator` running for "
                       f"namespace {res.namespace}?", EXIT_WAITING)
    return _finish(res, run, output)


def _withdraw(res: Resource, notes: dict[str, str], kind: str, exc: BaseException | None,
              why: str = "") -> None:
    """Raise `Withdrawn` once the unclaimed request is taken back; return if the operator
    claimed it (it acts: the caller goes on); a CliError if it could not be taken back."""
    try:
        taken = res.withdraw(notes)
    except Exception as failed:
        raise CliError(f"the {kind} request could NOT be withdrawn ({type(failed).__name__}: "
                       f"{failed}); withdraw it before the operator acts on it: kubectl "
                       f"annotate -n {res.namespace} fop {res.name} "
                       + " ".join(f"{k}-" for k in notes), EXIT_FAILED) from exc
    if taken:
        raise Withdrawn(f"the {kind} request {why + ' and ' if why else ''}was withdrawn "
                        "before the operator claimed it: nothing was done", EXIT_WAITING
                        ) from exc


def drill(ref: str, namespace: str | None, kubeconfig: str | None, *, actor: str,
          output: str, wait: float, claimed: bool = True) -> int:
    """A DR drill against a FailoverPlan in the cluster: a planned failover (no outage is
    caused), then a failback that runs whatever happened before it — a failed, refused or
    interrupted failover included — so the drill never leaves the world switched. A
    failover request the operator has not claimed when the drill is stopped (SIGINT,
    SIGTERM, SIGHUP) or `--wait` runs out is withdrawn instead: nothing happened, so
    there is nothing to fail back, and the operator will not act on it unattended later.
    A second signal is ignored until the drill has cleaned up. Exit 0 only when both
    runs ended well; 130, 143 or 129 when stopped by a signal. The two requests carry the
    drill's reasons, by which the operator judges the drill when it archives the failback
    (`controller.records.drills`): the verdict readiness and `history --drills` read."""
    from controller.drill.runner import EXIT_SIGNAL, Interrupted, Signals

    signals = Signals()
    with signals:
        stopped: BaseException | None = None
        try:
            code = request(ref, namespace, kubeconfig, kind="failover", level=3, yes=True,
                           reason=FAILOVER_REASON,
                           actor=actor, dry_run=False, output=output, wait=wait,
                           withdraw=True, claimed=claimed)
        except Withdrawn as exc:  # nothing was done: nothing to fail back
            cause = exc.__cause__
            if isinstance(cause, Interrupted):
                raise CliError(f"drill interrupted by {cause.signame}; {exc}",
                               EXIT_SIGNAL.get(cause.signame, 130)) from None
            if isinstance(cause, KeyboardInterrupt):
                raise CliError(f"drill interrupted; {exc}", 130) from None
            raise
        except (KeyboardInterrupt, CliError) as exc:  # claimed, or the run went wrong
            stopped, code = exc, EXIT_FAILED
        back = request(ref, namespace, kubeconfig, kind="failback", level=None, yes=True,
                       reason=FAILBACK_REASON, actor=actor,
                       dry_run=False, output=output, wait=wait, claimed=claimed)
    if isinstance(stopped, Interrupted):
        raise CliError(f"drill interrupted by {stopped.signame}; the operator had claimed "
                       "the failover, so it was failed back (exit "
                       f"{back} of the failback)", EXIT_SIGNAL.get(stopped.signame, 130))
    if isinstance(stopped, KeyboardInterrupt):
        raise CliError("drill interrupted; the failover was failed back", 130)
    if isinstance(stopped, CliError):
        raise CliError(f"{stopped}; the drill failed back all the same (exit {back} of the "
                       "failback)", stopped.code)
    return code if code != EXIT_OK else back


@_errors
def approve(ref: str, namespace: str | None, kubeconfig: str | None, *, run_id: str,
            step: str, actor: str, wait: float, output: str, claimed: bool = True) -> int:
    """Annotate an approval of the run (or one gated step), then follow the run."""
    res = connect(ref, namespace, kubeconfig)
    obj = res.get()
    plan = res.plan(obj)
    current = run_of(obj)
    if current is None or current["id"] != run_id:
        raise CliError(f"no run {run_id!r} in the status of {res} (its run: "
                       f"{current['id'] if current else 'none'})")
    actor = _who(res, actor, claimed, A_APPROVED_BY)
    allowed = plan.spec.approval.approvers
    if allowed and actor not in allowed:
        raise CliError(f"{actor} is not an approver of plan {plan.name} "
                       f"(approvers: {', '.join(allowed)})")
    res.annotate({A_APPROVE: f"{run_id}:{step}" if step else run_id, A_APPROVED_BY: actor},
                 pending=A_APPROVE)
    if output == "text":
        click.echo(f"approved {'step ' + step if step else 'run'} of {run_id} as {actor}")
    progress = console.Progress()
    more = not step and plan.spec.approval.required > 1  # ours may not be the last one

    def waits_for_us(run: Obj) -> bool:
        if step:
            return any(s["name"] == step and s["status"] == "awaiting-approval"
                       for s in run.get("steps", []))
        return not run.get("approved")

    def seen(o: Obj) -> None:
        run = run_of(o)
        if output == "text" and run is not None and run["id"] == run_id:
            progress.show(run.get("steps", []))

    def settled(o: Obj) -> bool:
        run = run_of(o)
        if A_APPROVE in _annotations(o) or run is None:
            return False
        return run["id"] != run_id or run.get("finishedAt") is not None or (
            run["phase"] == "AwaitingApproval" and (more or not waits_for_us(run)))

    run = run_of(res.follow(settled, seen, time.monotonic() + wait))
    assert run is not None
    return _finish(res, run, output)


@_errors
def done(ref: str, namespace: str | None, kubeconfig: str | None, *, run_id: str, step: str,
         actor: str, wait: float, output: str, claimed: bool = True) -> int:
    """Annotate that a person finished a human step (or did what a step waiting for a
    person asked); return once the operator recorded it (a waiting step: once it goes on)."""
    res = connect(ref, namespace, kubeconfig)
    obj = res.get()
    run = (obj.get("status") or {}).get("run") or {}
    if run.get("id") != run_id:
        raise CliError(f"no run {run_id!r} in the status of {res} (its run: "
                       f"{run.get('id') or 'none'})")
    manual = [d["name"] for d in run.get("definition", [])
              if (kind := find_step_kind(d.get("action", ""))) and kind.waits_for_person]
    asking = [s["name"] for s in run.get("steps", [])
              if s.get("status") == "awaiting-person" and s["name"] not in manual]
    if step not in manual and step not in asking:
        raise CliError(f"run {run_id} has no human step {step!r} "
                       f"(human steps: {', '.join(manual) or 'none'}; steps waiting for a "
                       f"person now: {', '.join(asking) or 'none'})")
    gone_on = {"succeeded"} if step in manual else {"running", "succeeded", "failed"}
    actor = _who(res, actor, claimed, A_DONE_BY)
    res.annotate({A_DONE: f"{run_id}:{step}", A_DONE_BY: actor}, pending=A_DONE)

    def record(o: Obj) -> Obj | None:
        r = run_of(o) or {}
        return next((s for s in r.get("steps", []) if s["name"] == step), None) \
            if r.get("id") == run_id else None

    def settled(o: Obj) -> bool:
        return A_DONE not in _annotations(o) and (record(o) or {}).get("status") in gone_on

    rec = record(res.follow(settled, lambda o: None, time.monotonic() + wait))
    if rec is None or rec["status"] not in gone_on:
        raise CliError(f"the operator has not recorded {step} of {run_id} as done within "
                       f"{wait:g} s; `failoverctl status fop/{res.name} -n {res.namespace}` "
                       "shows when it does", EXIT_WAITING)
    if output == "json":
        click.echo(json.dumps(rec, indent=2, sort_keys=True, default=str))
    else:
        click.echo(console.step_line(rec) + f"  by {rec.get('approvedBy') or actor}")
    return EXIT_OK


def _entry(obj: Obj) -> Obj:
    st = obj.get("status") or {}
    return {"plan": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace"),
            "phase": st.get("phase") or "Unknown", "level": st.get("level"),
            "activeSite": st.get("activeSite"),
            "lastDecision": st.get("lastDecision") or "(not reconciled by an operator yet)",
            "lastDecisionTime": st.get("lastDecisionTime"),
            "conditions": st.get("conditions") or [], "readiness": st.get("readiness") or None,
            "run": run_of(obj)}


@_errors
def status(ref: str | None, namespace: str | None, kubeconfig: str | None,
           output: str) -> int:
    """Phase, level, active site, last decision, conditions, readiness and the run's steps
    of one FailoverPlan (`fop/NAME`), or of every one in the namespace."""
    res = connect(ref or "fop/", namespace, kubeconfig)
    objs = [res.get()] if res.name else res.kube.list(GROUP, VERSION, res.namespace,
                                                      PLURAL).items
    data = [_entry(o) for o in objs]
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if output == "json"
               else console.status_text(data) or f"no {PLURAL} in namespace {res.namespace}")
    return EXIT_OK
