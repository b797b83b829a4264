"""What the three service-mesh traffic backends share: weights in one Kubernetes object.

Istio VirtualService, Gateway API HTTPRoute and SMI TrafficSplit all split traffic by
integer weights on a list of destinations inside one custom object. This module owns the
part that is the same for all three, so each backend module only says where its weights
live (`_groups`) and what an absent weight means:

- **Sites, not destinations**: options map each site (dc-a, dc-b) to one destination;
  `current()` returns `{site: weight}`. Every managed group (route, rule, the split) must
  hold exactly one destination per site, and all groups must carry the same weights,
  or the backend refuses with a `PermanentError` naming the object and what it holds —
  one weight per site is what the step saves and what revert restores, so a mismatch is
  a plan error to fix, not something to guess at.
- **Enable first, then drain**: a change is two writes — first every weight that rises,
  then every weight that falls — so no moment has less capacity than before or after
  (weights are relative in all three APIs). A change never leaves a group with total
  weight 0 (that would drop all traffic).
- **Concurrency**: each write is `Kube.update`: read, change only the weights, PUT with
  the read resourceVersion, and on 409 re-read and re-apply (bounded), so a concurrent
  edit of the object (another field, another route) is kept, never overwritten.
- **Idempotent**: a write that changes nothing is not sent; shift and revert to what is
  already there make no write at all. Revert writes exactly the saved weights: the
  weights are the whole state this backend changes, so `snapshot()` is the weights and
  the original saved before the first change is all a revert needs.
- **Fencing**: `fencing.check()` runs right before each write (also before a write
  re-applied after a 409), so a cancelled step makes no further change. Every write made
  inside a step also sets the annotation `failover.example.io/fencing-token` to the
  step's token, in the same resourceVersion-checked update; an object that already
  carries a larger token was written by a newer lease holder, and the write is refused
  with `fencing.StaleToken` (the object is left as that holder set it). A write outside
  any step (no token) neither sets nor checks the annotation.
- Evidence: the object, before/after weights, resourceVersions before/after, writes made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from controller import fencing
from controller.kube import Kube, KubeConnection, NotFound
from controller.model import Evidence, PermanentError, Weights
from controller.secrets import Secrets
from controller.traffic import TrafficBackend

Obj = dict[str, Any]
TOKEN_ANNOTATION = "failover.example.io/fencing-token"


class MeshOptions(KubeConnection):
    """The object to steer and how to reach its API server (see KubeConnection)."""

    namespace: str = Field(min_length=1, description="namespace of the object")
    name: str = Field(min_length=1, description="name of the object")


@dataclass
class Group:
    """One list of weighted destinations (an Istio http route, an HTTPRoute rule, ...)."""

    label: str  # e.g. `http route "reviews"`
    entries: list[Obj]  # every destination in the list, mapped to a site or not
    sites: dict[str, Obj] = field(default_factory=dict)  # site -> its entry


class MeshTrafficBackend(TrafficBackend):
    """TrafficBackend over one custom object; subclasses set the resource and `_groups`."""

    GROUP: ClassVar[str]
    VERSION: ClassVar[str]
    PLURAL: ClassVar[str]
    KIND: ClassVar[str]
    options: MeshOptions

    def __init__(self, options: MeshOptions, *, secrets: Secrets | None = None,
                 kube: Kube | None = None):
        self.options = options
        self.kube = kube or Kube.connect(options, secrets=secrets)

    # --- what subclasses provide ---------------------------------------------------------

    def sites(self) -> list[str]:
        raise NotImplementedError

    def _groups(self, spec: Obj) -> list[Group]:
        """The weighted lists this backend manages, each with its site -> entry map;
        raises PermanentError (via `self._mismatch`) when the object does not fit."""
        raise NotImplementedError

    def _weight(self, entry: Obj, group: Group) -> int:
        """The effective weight of an entry (API default when absent)."""
        return int(entry.get("weight", 0))

    # --- shared ---------------------------------------------------------------------------

    @property
    def object_name(self) -> str:
        return f"{self.KIND} {self.options.namespace}/{self.options.name}"

    def _mismatch(self, problem: str) -> PermanentError:
        return PermanentError(f"{self.object_name}: {problem}; fix the backend's options in "
                              "the plan or the object")

    def _read(self) -> Obj:
        try:
            return self.kube.get(self.GROUP, self.VERSION, self.options.namespace,
                                 self.PLURAL, self.options.name)
        except NotFound:
            raise PermanentError(f"{self.object_name} does not exist; {self._existing()}; "
                                 "fix the backend's name/namespace options or create the "
                                 "object") from None

    def _existing(self) -> str:
        try:
            names = sorted(o["metadata"]["name"] for o in self.kube.list(
                self.GROUP, self.VERSION, self.options.namespace, self.PLURAL).items)
        except Exception as exc:  # the listing only helps the message
            return f"(could not list the {self.PLURAL} there: {type(exc).__name__})"
        if not names:
            return f"namespace {self.options.namespace} has no {self.KIND}"
        return f"namespace {self.options.namespace} has {self.KIND} {', '.join(names)}"

    def _weights_of(self, obj: Obj) -> Weights:
        groups = self._groups(obj.get("spec") or {})
        seen: dict[str, Weights] = {}
        for g in groups:
            seen[g.label] = {site: self._weight(g.sites[site], g) for site in self.sites()}
        distinct = {tuple(sorted(w.items())) for w in seen.values()}
        if len(distinct) > 1:
            detail = "; ".join(f"{label}: {w}" for label, w in seen.items())
            raise self._mismatch(f"the managed routes carry different weights ({detail}); "
                                 "one backend steers them as one set: make them equal or "
                                 "split them over several backends")
        return dict(next(iter(seen.values())))

    def current(self) -> Weights:
        return self._weights_of(self._read())

    def _check(self, weights: Weights) -> None:
        unknown = sorted(set(weights) - set(self.sites()))
        if unknown:
            raise self._mismatch(f"no destination for site(s) {unknown} in the backend's "
                                 f"options; it maps {sorted(self.sites())}")
        bad = {s: w for s, w in weights.items() if not isinstance(w, int) or w < 0}
        if bad:
            raise self._mismatch(f"weights must be non-negative integers, got {bad}")

    def _set(self, weights: Weights, changed: list[bool]) -> Any:
        """The mutation for Kube.update: set these sites' weights in every group;
        `changed[0]` says whether the last application changed anything."""

        def mutate(obj: Obj) -> None:
            changed[:] = [False]
            for g in self._groups(obj.setdefault("spec", {})):
                for site, weight in weights.items():
                    if g.sites[site].get("weight") != weight:
                        changed[:] = [True]
                        g.sites[site]["weight"] = weight
                total = sum(self._weight(e, g) for e in g.entries)
                if total <= 0:
                    raise self._mismatch(f"refusing to set {weights} in {g.label}: it would "
                                         "send no traffic anywhere (total weight 0)")
            if changed[0]:  # this copy will be written (Kube.update sends nothing else)
                fencing.check()
                self._fence(obj)
        return mutate

    def _fence(self, obj: Obj) -> None:
        """Stamp the step's fencing token on the object about to be written; refuse when
        a newer lease holder has already written it."""
        token = fencing.token()
        if token is None:
            return
        annotations = obj.setdefault("metadata", {}).setdefault("annotations", {}) or {}
        seen = annotations.get(TOKEN_ANNOTATION)
        try:
            newest = int(seen) if seen is not None else None
        except ValueError:
            raise self._mismatch(f"annotation {TOKEN_ANNOTATION}={seen!r} is not a fencing "
                                 "token (a whole number); remove it") from None
        if newest is not None and newest > token:
            raise fencing.StaleToken(
                f"{self.object_name} was written with fencing token {newest}, newer than "
                f"this step's {token} (holder {fencing.holder()}): another controller "
                "holds the lease now; not writing")
        annotations[TOKEN_ANNOTATION] = str(token)
        obj["metadata"]["annotations"] = annotations

    def _apply(self, target: Weights) -> Evidence:
        """Two writes: every weight that rises (the target), then every one that falls."""
        self._check(target)
        if not target:
            raise self._mismatch("no weights given to set")
        obj = self._read()
        before = self._weights_of(obj)
        rv_before = obj["metadata"]["resourceVersion"]
        rising = {s: w for s, w in target.items() if w > before.get(s, 0)}
        writes = 0
        for change in (rising, target):
            if not change:
                continue
            changed = [False]
            # start from the copy in hand (read, or returned by the first write): a stale
            # copy is refused by the server and re-read, so this only saves a GET
            obj = self.kube.update(self.GROUP, self.VERSION, self.options.namespace,
                                   self.PLURAL, self.options.name, self._set(change, changed),
                                   current=obj)
            writes += changed[0]
        evidence: Evidence = {
            "object": self.object_name, "before": before, "after": self._weights_of(obj),
            "resourceVersion": {"before": rv_before,
                                "after": obj["metadata"]["resourceVersion"]},
            "writes": writes}
        if writes and fencing.token() is not None:
            evidence["fencingToken"] = fencing.token()
        return evidence

    def shift(self, *, to: str, weights: Weights) -> Evidence:
        """Set `weights` (sites not named keep theirs): `to` first, then drain."""
        if to not in self.sites():
            raise self._mismatch(f"no destination for target site {to!r}; the backend maps "
                                 f"{sorted(self.sites())}")
        if to not in weights:
            raise self._mismatch(f"weights {dict(weights)} give the target {to!r} no "
                                 f"weight; add {to!r} to them")
        return {**self._apply(dict(weights)), "to": to}

    def snapshot(self) -> Evidence:
        """The weights are the whole state this backend changes."""
        return {"weights": self.current()}

    def revert(self, *, to: Weights, snapshot: Evidence | None = None) -> Evidence:
        """Restore exactly the saved weights (rising ones first); the snapshot holds
        nothing more than those weights."""
        return self._apply(dict(to))
