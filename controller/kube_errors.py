"""Kubernetes API errors as the controller names them, from the API server's Status.

Owns the translation of an HTTP status + Status body into one named exception whose
message says which object (resource, namespace/name) and what to do — e.g. the verb and
resource to grant in manifests/deploy/rbac.yaml; a 403 from a ValidatingAdmissionPolicy
(manifests/deploy/admission-policy.yaml: a `*-by` annotation that is not the user) says
the policy's own message instead, since no grant fixes a rule the request broke. Kept
apart from `kube.py` (the client) so callers and tests can name the errors without the
Kubernetes client; `kube.py` re-exports them. Errors that retrying cannot fix are also
`PermanentError`s; `Unavailable` is a `ConnectionError`, which the executor retries.
"""

from __future__ import annotations

import json
import re
from typing import Any

from controller.fencing import StaleToken
from controller.model import PermanentError
from controller.secrets import redact

RBAC_FILE = "manifests/deploy/rbac.yaml"
# kube-apiserver's wording of a denial by a ValidatingAdmissionPolicy (Kubernetes 1.30+)
_VAP_DENIAL = re.compile(r"ValidatingAdmissionPolicy '(?P<policy>[^']+)' with binding "
                         r"'[^']*' denied request: (?P<why>.*)", re.DOTALL)
TARGET_FILE = "manifests/deploy/target-namespace.yaml"


class KubeError(Exception):
    """An error from the Kubernetes API; `status` is the HTTP status (0 = no answer)."""

    status = 0

    def __init__(self, message: str, *, status: int | None = None, reason: str = ""):
        super().__init__(redact(message))
        if status is not None:
            self.status = status
        self.reason = reason


class NotFound(KubeError, PermanentError):
    status = 404


class AlreadyExists(KubeError, PermanentError):
    status = 409


class Conflict(KubeError):
    """The object changed since it was read (stale resourceVersion): re-read and retry."""

    status = 409


class Gone(KubeError):
    """410: the resourceVersion is too old (compacted or out of the watch window): relist."""

    status = 410


class Forbidden(KubeError, PermanentError):
    status = 403


class Unauthorized(KubeError, PermanentError):
    status = 401


class Invalid(KubeError, PermanentError):
    status = 422


class Unavailable(KubeError, ConnectionError):
    """No usable answer (network, timeout, 429, 5xx): worth retrying later."""


class LeaseHeld(KubeError):
    """Another holder has the lease and it has not expired (or it won the race)."""


class LeaseLost(KubeError):
    """The lease we held is now held by someone else: stop acting at once."""


class StaleFencingToken(StaleToken):
    """A fenced write refused before it was sent: the object's `status.fencingToken` is
    larger than the writer's, so a newer leader has written it. `stored` and
    `stored_holder` say whose it is. Not a KubeError: retrying never helps; stop acting."""

    def __init__(self, message: str, *, stored: int, stored_holder: str | None):
        super().__init__(redact(message))
        self.stored, self.stored_holder = stored, stored_holder


def _ref(group: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """`virtualservices.networking.istio.io shop/reviews` (kubectl's resource.group form;
    a subresource as `failoverplans.failover.example.io/status`)."""
    base, _, sub = plural.partition("/")
    resource = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
    where = f"{namespace}/{name}" if namespace and name else (name or "")
    if not name:
        where = f"in namespace {namespace}" if namespace else "in all namespaces"
    return f"{resource} {where}"


def _status_body(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return {"message": body.strip()[:500]}
        return parsed if isinstance(parsed, dict) else {}
    return body if isinstance(body, dict) else {}


def _admission_denial(message: str) -> tuple[str, str] | None:
    """(policy, its message) when a 403's message is a ValidatingAdmissionPolicy's denial
    (`... is forbidden: ValidatingAdmissionPolicy 'P' with binding 'B' denied request:
    WHY`); None for any other 403."""
    match = _VAP_DENIAL.search(message)
    return None if match is None else (match["policy"], match["why"])


def error_from_status(status: int, body: Any, *, verb: str, group: str, plural: str,
                      namespace: str | None, name: str | None = None,
                      host: str = "") -> KubeError:
    """A named exception for an API error answer, naming the object and the fix."""
    st = _status_body(body)
    message = str(st.get("message") or "").strip()
    reason = str(st.get("reason") or "")
    code = int(st.get("code") or status or 0)
    obj = _ref(group, plural, namespace, name)
    head = f"Kubernetes API: {verb} {obj}"
    api = f": {message}" if message else ""
    resource = _ref(group, plural, None).split(" ", 1)[0]
    if code == 401:
        return Unauthorized(f"{head} was refused (401 Unauthorized): the credentials were "
                            f"not accepted by {host or 'the API server'}; check the token, "
                            "kubeconfig or in-cluster ServiceAccount", status=401,
                            reason=reason)
    if code == 403:
        denied = _admission_denial(message)
        if denied is not None:  # the user's request broke a rule, not the RBAC
            policy, why = denied
            return Forbidden(f"{head} was refused by the ValidatingAdmissionPolicy {policy} "
                             f"(403): {why}", status=403, reason=reason)
        scope = f" in namespace {namespace}" if namespace else " cluster-wide"
        return Forbidden(f"{head} is forbidden (403){api}. Fix: grant verb \"{verb}\" on "
                         f"resource \"{plural}\" in apiGroup \"{group}\"{scope} to the "
                         f"controller's identity (the Role in {RBAC_FILE} covers its own "
                         f"namespace; for another namespace, bind the ClusterRole "
                         f"failover-controller-target there with a RoleBinding as in "
                         f"{TARGET_FILE})", status=403,
                         reason=reason)
    if code == 404:
        details = st.get("details") or {}
        if name and details.get("name") == name:
            return NotFound(f"{head}: not found (404): no {resource} named {name!r} in "
                            f"namespace {namespace}", status=404, reason=reason)
        return NotFound(f"{head}: the API server does not serve {resource} (404){api}; is "
                        f"its CustomResourceDefinition installed and the version right?",
                        status=404, reason=reason)
    if code == 409 and reason == "AlreadyExists":
        return AlreadyExists(f"{head}: already exists (409){api}", status=409, reason=reason)
    if code == 409:
        return Conflict(f"{head}: conflict (409){api}; the object changed since it was read: "
                        "re-read it and apply the change again", status=409, reason=reason)
    if code == 410:
        return Gone(f"{head}: resourceVersion too old (410 Gone){api}; list again and watch "
                    "from the list's resourceVersion", status=410, reason=reason)
    if code in (400, 422):
        causes = (st.get("details") or {}).get("causes") or []
        fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes)
        return Invalid(f"{head} was rejected as invalid ({code}){api}"
                       + (f" [{fields}]" if fields and fields not in message else ""),
                       status=code, reason=reason)
    if code == 429 or code >= 500 or code == 0:
        return Unavailable(f"{head}: the API server is unavailable ({code or 'no answer'})"
                           f"{api}; retry later", status=code, reason=reason)
    return KubeError(f"{head} failed ({code}){api}", status=code, reason=reason)
