"""Generates the FailoverPlan CustomResourceDefinition from the plan's JSON Schema.

Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, `nullable` instead of
`anyOf: [X, null]`, and free-form maps marked `x-kubernetes-preserve-unknown-fields`.
Generating it from `plan.py` keeps the CRD and the YAML plan files one schema.
"""

from __future__ import annotations

from typing import Any

from controller.plan import format_duration, json_schema

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
        if key == "const":
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


def crd() -> dict[str, Any]:
    schema = json_schema()
    defs = schema.get("$defs", {})
    root = _structural(schema, defs)
    spec = root["properties"]["spec"]
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
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Level", "type": "integer", "jsonPath": ".status.level"},
                    {"name": "Active", "type": "string", "jsonPath": ".status.activeSite"},
                    {"name": "Decided", "type": "date",
                     "jsonPath": ".status.lastDecisionTime"},
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
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }
