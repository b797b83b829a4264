"""Generates the FailoverPlan CustomResourceDefinition from the plan's JSON Schema, and
describes the status the operator writes (`status.build`), so `kubectl explain
fop.status.policy` says what each field means and the API server keeps what it knows.

Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, `nullable` instead of
`anyOf: [X, null]`, and free-form maps marked `x-kubernetes-preserve-unknown-fields`.
Generating it from `plan.py` keeps the CRD and the YAML plan files one schema.
"""

from __future__ import annotations

from typing import Any

from controller.model import DecisionState, Phase
from controller.plan import format_duration, json_schema
from controller.status import CONDITIONS
from controller.steps.traffic import TrafficParams

GROUP, VERSION, KIND, PLURAL = "failover.example.io", "v1alpha1", "FailoverPlan", "failoverplans"
_DROP = {"title", "$defs", "description_", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            single: dict[str, Any] = _structural({**options[0], **rest}, defs)
            if len(options) < len(node["anyOf"]):
                single["nullable"] = True
            return single
        return {**_structural(rest, defs), "x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "x-kubernetes-validations":
            out[key] = value  # CEL rules, not a schema
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12 gives the bound; OpenAPI v3.0 (Kubernetes) wants a flag
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is not False:
                out[key] = _structural(value, defs)
        else:
            out[key] = _structural(value, defs)
    if out.get("type") == "string" and isinstance(out.get("default"), int | float) \
            and not isinstance(out["default"], bool):
        out["default"] = format_duration(out["default"])  # a Duration: "5m", not 300.0
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" \
            not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and "enum" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


_SITES = "[self.sites.primary.name, self.sites.backup.name]"


def _site_key(k: str) -> str:
    """CEL: `k` names a site of the plan, or a server of one (site/server)."""
    return f"{k} in {_SITES} || {_SITES}.exists(n, {k}.startsWith(n + '/'))"


def _cannot_run(spec: dict[str, Any]) -> None:
    """Rules the API server enforces beyond the field types (CEL, `x-kubernetes-
    validations`), so a plan that validates field by field yet cannot run is refused on
    `kubectl apply`, not only by the operator later: more approvals required than
    approvers, traffic weights that send nothing anywhere, below 0 or for an unknown site,
    a signal named like a service. `plan.py` says the same in the same words; the traffic
    params' own rules are declared once, on `TrafficParams` (`_traffic_params`)."""
    props = spec["properties"]
    # the API server prices every rule before it accepts the CRD: bounded lists and maps
    # keep the rules below its budget (far more than any plan needs)
    for name, most in (("services", 64), ("signals", 64), ("steps", 128)):
        props[name]["maxItems"] = most
    props["approval"]["x-kubernetes-validations"] = [{
        "rule": "!has(self.approvers) || size(self.approvers) == 0 || "
                "!has(self.required) || self.required <= size(self.approvers)",
        "fieldPath": ".required",
        "message": "more approvals are required than there are approvers, so a run would "
                   "wait forever; lower required or add approvers (empty = anyone)"}]
    params = props["steps"]["items"]["properties"]["params"]
    params["properties"] = _traffic_params()
    spec.setdefault("x-kubernetes-validations", []).extend([
        {"rule": "!has(self.signals) || self.signals.all(g, "
                 "self.services.all(s, s.name != g.name))",
         "fieldPath": ".signals",
         "message": "a signal has the name of a service, so the two would be read as one; "
                    "rename the signal"},
        {"rule": "self.steps.all(t, !has(t.params) || "
                 f"((!has(t.params.to) || {_site_key('t.params.to')}) && "
                 f"(!has(t.params.weights) || t.params.weights.all(k, {_site_key('k')}))))",
         "fieldPath": ".steps",
         "message": "a traffic step's `to` or `weights` names a site the plan does not "
                    "have; use spec.sites.primary.name or spec.sites.backup.name"},
    ])


def _traffic_params() -> dict[str, Any]:
    """A traffic step's `to` and `weights` with the rules `TrafficParams` declares for the
    API server (no other kind's params use these names). Not nullable: a plan leaves them
    out rather than setting them to null."""
    schema = TrafficParams.model_json_schema(by_alias=True)
    out = {}
    for name in ("to", "weights"):
        field = _structural(schema["properties"][name], schema.get("$defs", {}))
        field.pop("nullable", None)
        field.pop("default", None)
        out[name] = field
    return out


_PHASES = ", ".join(p.value for p in Phase)


def _field(kind: str, description: str, **more: Any) -> dict[str, Any]:
    return {"type": kind, "description": description, **more}


def _time(description: str) -> dict[str, Any]:
    return _field("string", description, format="date-time", nullable=True)


def _free(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "nullable": True,
            "x-kubernetes-preserve-unknown-fields": True}


def _policy() -> dict[str, Any]:
    """`status.policy` as `PolicyState.observed` writes it: observations, never samples."""
    service = _field("object", "what the probes of one service show", properties={
        "available": _field("boolean", "not down: fewer failed probes in a row than the "
                            "trigger's consecutiveFailures"),
        "availability": _field("number", "percent of the probes in the window that "
                               "passed (null before the first)", nullable=True),
        "probes": _field("integer", "probes of this service in the window"),
        "consecutiveFailures": _field("integer", "failed probes in a row, up to now"),
        "consecutiveSuccesses": _field("integer", "passed probes in a row, up to now"),
        "failingSince": _time("the first failed probe of the failures in a row"),
    })
    return _field("object", "what the policy observes and decided; the probe samples "
                  "themselves stay in the controller's journal", nullable=True, properties={
        "decided": _field("string", "the state of the last decision: "
                          + ", ".join(d.value for d in DecisionState), nullable=True),
        "tripped": _field("boolean", "the thresholds tripped and have not cleared since"),
        "level": _field("integer", "the response level of the trip", nullable=True),
        "detectedAt": _time("when the trip's condition began"),
        "cooldownUntil": _time("no automatic failover before this time"),
        "belowFloorSince": _time("core availability below the trigger's floor since"),
        "surgeSince": _time("a signal that trips breached since"),
        "availability": _field("number", "percent: the core services' mean availability "
                               "over the window, a service down counting 0"),
        "servicesDown": _field("array", "services with consecutiveFailures failed probes "
                               "in a row", items={"type": "string"}),
        "services": _field("object", "per service, by name",
                           additionalProperties=service),
        "signals": _field("object", "the last value of each business signal, by name",
                          additionalProperties={"type": "number"}),
    })


def _status() -> dict[str, Any]:
    """The status the operator writes (`status.build`), described for `kubectl explain`;
    the controller's own records (the run, the spec it runs with) stay free-form."""
    condition = _field("object", "a condition with its reason", properties={
        "type": _field("string", ", ".join(CONDITIONS)),
        "status": _field("string", "True or False"),
        "reason": _field("string", "why, in one word"),
        "message": _field("string", "why, for people"),
        "lastTransitionTime": _time("when status last changed"),
    })
    return _field("object", "what the controller observed and did", properties={
        "observedGeneration": _field("integer", "the generation of the spec last reconciled",
                                     nullable=True),
        "phase": _field("string", f"the plan's phase: {_PHASES}; Invalid when its spec "
                        "cannot run (the plan is not watched)"),
        "planPhase": _field("string", "an invalid plan's own phase"),
        "problems": _field("array", "why the spec cannot run", items={"type": "string"}),
        "level": _field("integer", "the response level (1 most severe)", nullable=True),
        "activeSite": _field("string", "the site serving now", nullable=True),
        "lastDecision": _field("string", "the last decision, as a sentence", nullable=True),
        "lastDecisionTime": _time("when the last decision was made"),
        "updatedAt": _field("number", "when the plan's record last changed (epoch seconds)",
                            nullable=True),
        "policy": _policy(),
        "readiness": _free("the backup site's readiness: score (percent) and failing checks"),
        "appliedGeneration": _field("integer", "the generation the plan runs with",
                                    nullable=True),
        "appliedSpec": _free("the spec the plan runs with (held during an incident)"),
        "fencingToken": _field("integer", "the writing leader's fencing token",
                               nullable=True),
        "fencingHolder": _field("string", "the writing leader", nullable=True),
        "run": _free("the current or last run: its steps, their status and evidence"),
        "conditions": _field("array", ", ".join(CONDITIONS), items=condition),
    })


def crd() -> dict[str, Any]:
    schema = json_schema()
    defs = schema.get("$defs", {})
    root = _structural(schema, defs)
    spec = root["properties"]["spec"]
    _cannot_run(spec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "failoverplan",
                      "shortNames": ["fop"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
                     "description": "Invalid when the spec cannot run (not watched)"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                     "description": "the controller watches this plan"},
                    {"name": "Reason", "type": "string",
                     "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                     "description": "Reconciling, InvalidPlan or Deleting"},
                    {"name": "Level", "type": "integer", "jsonPath": ".status.level"},
                    {"name": "Active", "type": "string", "jsonPath": ".status.activeSite"},
                    {"name": "Decided", "type": "date",
                     "jsonPath": ".status.lastDecisionTime"},
                    # -o wide: what was decided and how far the run has got
                    {"name": "Decision", "type": "string", "priority": 1,
                     "jsonPath": ".status.lastDecision",
                     "description": "the last decision, as a sentence"},
                    {"name": "Run", "type": "string", "priority": 1,
                     "jsonPath": ".status.run.id"},
                    {"name": "Progress", "type": "string", "priority": 1,
                     "jsonPath": ".status.run.progress",
                     "description": "steps finished / steps, and the step under way"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": _status(),
                    },
                }},
            }],
        },
    }
