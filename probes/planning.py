"""Plan experiments for a mesh: a static audit of its routes, then one experiment per edge.

Pure logic, no I/O: :func:`make_plan` takes the namespace's Services, VirtualServices and
DestinationRules as the API returns them (dicts) and, when traffic could be observed, the
call tree the sidecars recorded (:meth:`probes.evidence.request.CallTree.observe`). The
``meshchaos plan`` command reads those and writes the result.

**Edges.** A VirtualService acts in the *caller's* sidecar and does not name the caller
(docs/fidelity.md §2.1), so the routes alone say "any caller -> host". Who calls whom comes
from observed traffic: with a call tree, the edges are the ingress -> entry edge (timed by
the Gateway-bound VirtualService) and every observed ``caller -> callee`` (timed by the
mesh VirtualService of the callee's host, or by none). Without one, each Service is an
edge ``* -> service`` with its route (the entry, which only the ingress calls, is
``ingress -> service``); the inversion rule then has no caller to compare with and says so.

**Rules** (each :class:`Finding` names the objects and their values):

- ``timeout-inversion``: a callee's route bounds a call at least as long as its caller's own
  deadline per try: the callee outlives its caller (§2.1; a try's deadline is the route
  timeout or a shorter ``perTryTimeout``, §1.2; the callee's bound is the smaller of its
  timeout and its tries x per-try timeout, §1.2 "the route timeout bounds the tries").
- ``retries-exceed-timeout``: ``(1 + retries.attempts) x perTryTimeout`` beyond the route
  timeout: the last tries are cut by the route timeout's 504 (§1.2, attempts = retries, §2.2).
- ``no-timeout``: an edge no VirtualService timeout or ``perTryTimeout`` bounds: Istio's
  default route timeout is none (§2.1) and its default retry policy sets no per-try
  timeout (§2.2), so a hung callee hangs its caller.
- ``per-try-not-retried``: a ``perTryTimeout`` with retries whose ``retryOn`` lacks ``5xx``,
  ``gateway-error`` and ``reset``: a per-try timeout counts as a reset and is not retried
  (§1.2 "which retry_on retries it"; an unset ``retryOn`` is Istio's default, §2.2).
- ``subset-undefined``: a route to a subset no DestinationRule of its host defines: the
  sidecar has no cluster for it (§2.2 "subsets").

**Experiments** come from the suite's templates (``experiments/*.json``); only their
configuration defaults, title and description change. With a call tree: a
``timeout-cascade`` per edge to a leaf with a bounded route, a ``pod-kill-midchain`` per hop
that has a caller and callees, and per edge to a leaf either a ``sidecar-failure`` (the leaf
sits beside a deeper call of the same caller: the main path goes on through the sibling,
so the leaf looks optional, and the run tells) or a ``partition-leaf`` (the leaf ends the
main path: cutting it times out the hops above). Timeout cascades aim at leaves only: the
template's delay shapes the target's egress (docs/fidelity.md §5.2), so on a hop with
callees it also holds that hop's own calls, which then never reach its callees, and the
trace-continuity probe reads their missing spans as a break (measured on both chains: every
cascade aimed at a mid hop FAILed on ``same-trace``, every one aimed at a leaf PASSed); an
inversion on a mid edge is exercised by the cascades on the leaves below it. Without one,
only ``pod-kill-midchain`` for each routed service with retries (the other templates need a
caller or a peer).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from probes.errors import ConfigurationError
from probes.evidence.kube import parse_duration_ms
from probes.evidence.request import CallTree

__all__ = [
    "ANY",
    "INGRESS",
    "RULES",
    "SERVICE_KEYS",
    "Edge",
    "Finding",
    "Plan",
    "PlannedExperiment",
    "RouteTiming",
    "audit",
    "choose_edges",
    "entry_path_of",
    "format_ms",
    "make_plan",
    "plan_experiments",
    "plan_json",
    "render_experiment",
    "render_summary",
    "routes_of",
]

INGRESS = "ingress"  # the caller of the entry: the ingress gateway
ANY = "*"  # an unknown caller (no observed call graph)
SERVICE_KEYS = ("target_service", "target_caller", "partition_peer", "side_service")

# Istio's retryOn when a VirtualService sets retries without one (docs/fidelity.md §2.2).
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled",
                    "retriable-status-codes")
DEFAULT_ATTEMPTS = 2  # Istio's default policy: two retries (§2.2)
_RETRIES_PER_TRY = {"5xx", "gateway-error", "reset"}  # §1.2

RULES: dict[str, str] = {
    "timeout-inversion": "a callee's route must time out before its caller's deadline per "
                         "try: the VirtualService acts in the caller's sidecar "
                         "(docs/fidelity.md §2.1, §1.2)",
    "retries-exceed-timeout": "(1 + retries.attempts) x perTryTimeout must fit the route "
                              "timeout, which bounds every try (docs/fidelity.md §1.2, §2.2)",
    "no-timeout": "every edge needs a timeout: Istio's default route timeout is none "
                  "(docs/fidelity.md §2.1) and its default retries set no per-try timeout (§2.2)",
    "per-try-not-retried": "a per-try timeout is retried only with 5xx, gateway-error or "
                           "reset in retryOn (docs/fidelity.md §1.2)",
    "subset-undefined": "a route's subset must be defined by a DestinationRule of its host "
                        "(docs/fidelity.md §2.2 subsets)",
}
CLAUSES: dict[str, str] = {
    "timeout-inversion": "docs/fidelity.md §2.1",
    "retries-exceed-timeout": "docs/fidelity.md §1.2",
    "no-timeout": "docs/fidelity.md §2.1",
    "per-try-not-retried": "docs/fidelity.md §1.2",
    "subset-undefined": "docs/fidelity.md §2.2",
}


def format_ms(ms: int) -> str:
    """A duration as a VirtualService would spell it: ``300ms``, ``1s``, ``1.5s``."""
    if ms < 1000:
        return f"{ms}ms"
    return f"{ms / 1000:g}s"


@dataclass(frozen=True)
class RouteTiming:
    """One VirtualService HTTP route towards a host, with Istio's defaults applied."""

    virtual_service: str
    namespace: str
    host: str  # destination host, short name
    timeout_ms: int  # 0: none (§2.1)
    attempts: int  # retries after the first try (§2.2: attempts = num_retries)
    per_try_timeout_ms: int  # 0: none
    retry_on: tuple[str, ...]
    retries_block: bool  # False: no `retries` in the route, Istio's default policy (§2.2)
    gateway: bool  # bound to a Gateway: acts at the ingress, not in sidecars
    mesh: bool  # acts in the sidecars (no `gateways`, or `mesh` among them)
    subset: str
    paths: tuple[str, ...] = ()  # uri matches, e.g. ("prefix /api/",)

    @property
    def tries(self) -> int:
        return 1 + self.attempts

    @property
    def per_try_ms(self) -> int:
        """The per-try timeout Envoy keeps: one not shorter than the route timeout is
        dropped (§1.2 "source and cap")."""
        if self.per_try_timeout_ms and (not self.timeout_ms
                                        or self.per_try_timeout_ms < self.timeout_ms):
            return self.per_try_timeout_ms
        return 0

    @property
    def bound_ms(self) -> int:
        """How long the caller's sidecar waits at most (0: forever): the route timeout, or
        all tries of the per-try timeout when they end first (§1.2)."""
        tries_ms = self.tries * self.per_try_ms if self.per_try_ms else 0
        bounds = [b for b in (self.timeout_ms, tries_ms) if b]
        return min(bounds) if bounds else 0

    @property
    def try_deadline_ms(self) -> int:
        """How long one try of this route may run (0: forever): the caller's deadline as
        its callee's app sees it."""
        return self.per_try_ms or self.timeout_ms

    def object_name(self) -> str:
        return f"VirtualService '{self.virtual_service}' ({self.namespace})"

    def describe_bound(self) -> str:
        """``timeout 1s`` / ``2 tries x perTryTimeout 400ms = 800ms, under timeout 1s``."""
        if self.per_try_ms and self.tries * self.per_try_ms == self.bound_ms:
            under = f", under timeout {format_ms(self.timeout_ms)}" if self.timeout_ms else ""
            return (f"{self.tries} tries x perTryTimeout {format_ms(self.per_try_ms)} = "
                    f"{format_ms(self.bound_ms)}{under}")
        return f"timeout {format_ms(self.timeout_ms)}"

    def describe_try(self) -> str:
        if self.per_try_ms:
            return f"perTryTimeout {format_ms(self.per_try_ms)}"
        return f"route timeout {format_ms(self.timeout_ms)}"


@dataclass(frozen=True)
class Edge:
    """A call the plan considers: ``caller`` is a service, :data:`INGRESS` or :data:`ANY`."""

    caller: str
    callee: str
    route: RouteTiming | None
    observed: bool

    @property
    def name(self) -> str:
        return f"{self.caller} -> {self.callee}"

    @property
    def internal(self) -> bool:
        """A call between two services of the namespace (not from the ingress, caller known)."""
        return self.caller not in (INGRESS, ANY)


@dataclass(frozen=True)
class Finding:
    """One broken rule: where, which objects, their values, and the sentence to show."""

    rule: str
    edge: str
    objects: tuple[str, ...]
    values: Mapping[str, str]
    message: str
    clause: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "edge": self.edge, "objects": list(self.objects),
                "values": dict(self.values), "message": self.message, "clause": self.clause}


@dataclass(frozen=True)
class PlannedExperiment:
    """One experiment to write: the template, the keys it is aimed with, and why."""

    template: str
    edge: Edge
    keys: Mapping[str, str]
    why: str
    findings: tuple[str, ...] = ()  # messages of the findings on this edge

    @property
    def file_name(self) -> str:
        caller = "any" if self.edge.caller == ANY else self.edge.caller
        return f"{self.template}--{caller}-to-{self.edge.callee}.json"


@dataclass(frozen=True)
class Plan:
    """Everything ``meshchaos plan`` reports and writes for one namespace."""

    namespace: str
    services: tuple[str, ...]
    edges: tuple[Edge, ...]
    findings: tuple[Finding, ...]
    experiments: tuple[PlannedExperiment, ...]
    graph: str  # "observed" | "virtual-services"
    entry_path: str
    notes: tuple[str, ...] = field(default=())


# -- reading the objects ------------------------------------------------------------------

def _short_host(host: str, namespace: str) -> str | None:
    """``pricing`` / ``pricing.shop.svc.cluster.local`` -> ``pricing``; a host of another
    namespace -> None (not a Service of this one)."""
    parts = host.split(".")
    if len(parts) > 1 and parts[1] != namespace and parts[1] != "svc":
        return None
    return parts[0]


def _uri_paths(http: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for match in http.get("match") or ():
        for kind, value in ((match or {}).get("uri") or {}).items():
            out.append(f"{kind} {value}")
    return tuple(out)


def routes_of(virtual_services: Iterable[Mapping[str, Any]], namespace: str) -> list[RouteTiming]:
    """Every HTTP route of the VirtualServices, one per destination, Istio's defaults applied:
    no ``retries`` is two retries with Istio's retryOn and no per-try timeout; attempts 0 is
    none (§2.2); no ``timeout`` is none (§2.1)."""
    routes: list[RouteTiming] = []
    for vs in virtual_services:
        meta = vs.get("metadata") or {}
        spec = vs.get("spec") or {}
        gateways = [str(g) for g in spec.get("gateways") or ()]
        mesh = not gateways or "mesh" in gateways
        gateway = any(g != "mesh" for g in gateways)
        for http in spec.get("http") or ():
            retries = http.get("retries")
            block = isinstance(retries, Mapping)
            r: Mapping[str, Any] = retries if isinstance(retries, Mapping) else {}
            attempts = int(r.get("attempts") or 0) if block else DEFAULT_ATTEMPTS
            retry_on = tuple(t.strip() for t in str(r.get("retryOn") or "").split(",")
                             if t.strip()) or DEFAULT_RETRY_ON
            for dest in http.get("route") or ():
                destination = (dest or {}).get("destination") or {}
                host = _short_host(str(destination.get("host") or ""), namespace)
                if not host:
                    continue
                routes.append(RouteTiming(
                    str(meta.get("name")), str(meta.get("namespace") or namespace), host,
                    parse_duration_ms(http.get("timeout")), max(0, attempts),
                    parse_duration_ms(r.get("perTryTimeout")), retry_on, block, gateway, mesh,
                    str(destination.get("subset") or ""), _uri_paths(http)))
    return routes


def entry_path_of(routes: Sequence[RouteTiming]) -> str | None:
    """A request path the ingress routes: the first Gateway route's exact or prefix match."""
    for route in routes:
        if not route.gateway:
            continue
        for match in route.paths or ("prefix /",):
            kind, _, value = match.partition(" ")
            if kind in ("exact", "prefix") and value.startswith("/"):
                return value
    return None


# -- edges ----------------------------------------------------------------------------------

def choose_edges(services: Sequence[str], routes: Sequence[RouteTiming],
                 observed: CallTree | None) -> list[Edge]:
    """The edges to audit: the observed calls when there is a call tree, else one
    ``* -> service`` per Service (``ingress -> service`` for what only the ingress routes)."""
    mesh: dict[str, RouteTiming] = {}
    ingress: dict[str, RouteTiming] = {}
    for route in routes:
        if route.mesh:
            mesh.setdefault(route.host, route)
        if route.gateway:
            ingress.setdefault(route.host, route)
    if observed is not None:
        edges = [Edge(INGRESS, observed.entry, ingress.get(observed.entry), True)]
        edges += [Edge(caller, callee, mesh.get(callee), True)
                  for caller, callee in observed.edges()]
        return edges
    edges = [Edge(INGRESS, host, route, False) for host, route in ingress.items()
             if host in services]
    edges += [Edge(ANY, name, mesh.get(name), False) for name in services
              if name in mesh or name not in ingress]
    return edges


# -- the audit ------------------------------------------------------------------------------

def _leaves_below(calls: Mapping[str, list[str]], hop: str) -> list[str]:
    out, queue = [], list(calls.get(hop, ()))
    while queue:
        nxt = queue.pop(0)
        if not calls.get(nxt) and nxt not in out:
            out.append(nxt)
        queue.extend(calls.get(nxt, ()))
    return out


def _cascade_note(calls: Mapping[str, list[str]], edge: Edge) -> str:
    below = _leaves_below(calls, edge.callee)
    if not calls.get(edge.callee):
        where = "the timeout-cascade experiment of this edge tests"
    else:
        where = (f"the timeout-cascade experiments on the leaves below it ({', '.join(below)})"
                 " test")
    return (" The mesh keeps the apps' x-envoy-upstream-rq-timeout-ms (docs/fidelity.md "
            "§1.4), so a budget the apps propagate can end the call first: "
            f"{where} whether it does.")


def _inversions(edges: Sequence[Edge], honor_app_headers: bool) -> list[Finding]:
    into = {e.callee: e for e in edges}  # the edge that calls each hop (first caller)
    calls = _callees(edges)
    found = []
    for edge in edges:
        outer = into.get(edge.caller) if edge.internal else None
        inner = edge.route
        if outer is None or outer.route is None or inner is None:
            continue
        deadline, bound = outer.route.try_deadline_ms, inner.bound_ms
        if not deadline or not bound or bound < deadline:
            continue
        note = _cascade_note(calls, edge) if honor_app_headers else ""
        found.append(Finding(
            "timeout-inversion", edge.name,
            (inner.object_name(), outer.route.object_name()),
            {"callee_bound": format_ms(bound), "caller_deadline": format_ms(deadline)},
            f"{inner.object_name()}: the route to {edge.callee} waits up to "
            f"{format_ms(bound)} ({inner.describe_bound()}), which is >= its caller "
            f"{edge.caller}'s deadline per try {format_ms(deadline)} ({outer.route.object_name()}"
            f": {outer.route.describe_try()}): the callee outlives its caller's deadline "
            f"(docs/fidelity.md §2.1).{note}", CLAUSES["timeout-inversion"]))
    return found


def _unique_routes(edges: Sequence[Edge]) -> list[tuple[RouteTiming, list[Edge]]]:
    out: dict[RouteTiming, list[Edge]] = {}
    for edge in edges:
        if edge.route is not None:
            out.setdefault(edge.route, []).append(edge)
    return list(out.items())


def _retry_findings(edges: Sequence[Edge]) -> list[Finding]:
    found = []
    for route, on in _unique_routes(edges):
        names = ", ".join(e.name for e in on)
        total = route.tries * route.per_try_timeout_ms
        if route.timeout_ms and route.per_try_timeout_ms and total > route.timeout_ms:
            dropped = (" (a perTryTimeout not shorter than the route timeout is dropped, "
                       "§1.2)" if not route.per_try_ms else "")
            found.append(Finding(
                "retries-exceed-timeout", names, (route.object_name(),),
                {"attempts": str(route.attempts),
                 "perTryTimeout": format_ms(route.per_try_timeout_ms),
                 "timeout": format_ms(route.timeout_ms)},
                f"{route.object_name()}: retries.attempts {route.attempts} ({route.tries} "
                f"tries) x perTryTimeout {format_ms(route.per_try_timeout_ms)} = "
                f"{format_ms(total)} exceeds the route timeout {format_ms(route.timeout_ms)}"
                f"{dropped}: the route timeout cuts the last tries with 504 UT "
                "(docs/fidelity.md §1.2).", CLAUSES["retries-exceed-timeout"]))
        if route.per_try_timeout_ms and route.attempts and \
                not _RETRIES_PER_TRY & set(route.retry_on):
            spelled = ",".join(route.retry_on)
            source = "" if route.retries_block and spelled != ",".join(DEFAULT_RETRY_ON) \
                else " (Istio's default, §2.2)"
            found.append(Finding(
                "per-try-not-retried", names, (route.object_name(),),
                {"perTryTimeout": format_ms(route.per_try_timeout_ms), "retryOn": spelled},
                f"{route.object_name()}: perTryTimeout {format_ms(route.per_try_timeout_ms)} "
                f"is never retried with retryOn '{spelled}'{source}: a per-try timeout counts "
                "as a reset, retried only under 5xx, gateway-error or reset, so its "
                f"retries.attempts {route.attempts} never apply to it (docs/fidelity.md §1.2).",
                CLAUSES["per-try-not-retried"]))
    return found


def _missing_timeouts(edges: Sequence[Edge]) -> list[Finding]:
    found = []
    for edge in edges:
        route = edge.route
        if route is not None and route.bound_ms:
            continue
        if route is None:
            why = (f"no VirtualService routes {edge.callee}"
                   + (" at the ingress" if edge.caller == INGRESS else ""))
            objects: tuple[str, ...] = ()
        else:
            why = f"{route.object_name()} sets neither timeout nor retries.perTryTimeout"
            objects = (route.object_name(),)
        found.append(Finding(
            "no-timeout", edge.name, objects, {"timeout": "none", "perTryTimeout": "none"},
            f"no timeout on edge {edge.name} ({why}: Istio's default is none, "
            "docs/fidelity.md §2.1; its default retries add no per-try timeout, §2.2): a "
            f"hung {edge.callee} hangs {edge.caller if edge.internal else 'its callers'}.",
            CLAUSES["no-timeout"]))
    return found


def _subsets(destination_rules: Iterable[Mapping[str, Any]],
             namespace: str) -> dict[str, tuple[str, set[str]]]:
    """host -> (DestinationRule name, its subset names)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for rule in destination_rules:
        spec = rule.get("spec") or {}
        host = _short_host(str(spec.get("host") or ""), namespace)
        if host:
            names = {str(s.get("name")) for s in spec.get("subsets") or () if s}
            name = str((rule.get("metadata") or {}).get("name"))
            prior = out.get(host)
            out[host] = (prior[0] if prior else name, names | (prior[1] if prior else set()))
    return out


def _undefined_subsets(edges: Sequence[Edge], destination_rules: Iterable[Mapping[str, Any]],
                       namespace: str) -> list[Finding]:
    defined = _subsets(destination_rules, namespace)
    found = []
    for route, on in _unique_routes(edges):
        if not route.subset:
            continue
        rule, names = defined.get(route.host, ("", set()))
        if route.subset in names:
            continue
        where = (f"DestinationRule '{rule}' defines {', '.join(sorted(names)) or 'none'}"
                 if rule else f"no DestinationRule has host {route.host}")
        found.append(Finding(
            "subset-undefined", ", ".join(e.name for e in on),
            (route.object_name(), *((f"DestinationRule '{rule}' ({namespace})",) if rule else ())),
            {"subset": route.subset},
            f"{route.object_name()} routes to subset '{route.subset}' of {route.host}, but "
            f"{where}: the sidecar has no cluster for it and the requests fail with 503 "
            "(docs/fidelity.md §2.2 subsets).", CLAUSES["subset-undefined"]))
    return found


def audit(edges: Sequence[Edge], destination_rules: Iterable[Mapping[str, Any]] = (), *,
          namespace: str = "", honor_app_headers: bool = False) -> list[Finding]:
    """Every rule of :data:`RULES` over the edges (see the module docstring)."""
    return [*_inversions(edges, honor_app_headers), *_retry_findings(edges),
            *_missing_timeouts(edges), *_undefined_subsets(edges, destination_rules, namespace)]


# -- the experiments ------------------------------------------------------------------------

def _callees(edges: Sequence[Edge]) -> dict[str, list[str]]:
    calls: dict[str, list[str]] = {}
    for edge in edges:
        if edge.internal:
            calls.setdefault(edge.caller, []).append(edge.callee)
    return calls


def _keys(**values: str) -> dict[str, str]:
    return {key: values.get(key, "") for key in SERVICE_KEYS}


def _on_edge(findings: Sequence[Finding], edge: Edge) -> tuple[str, ...]:
    return tuple(f.message for f in findings if edge.name in f.edge.split(", "))


def _side_failure(edge: Edge, deeper: Sequence[str], mine: tuple[str, ...]
                  ) -> PlannedExperiment:
    # A leaf beside a deeper call looks like a side call: the caller's answer rests on the
    # deeper path. Its partition would time out nothing above the caller (the orphan rule
    # of partition-leaf would judge nothing), so the side-failure template is the test.
    return PlannedExperiment(
        "sidecar-failure", edge, _keys(side_service=edge.callee),
        f"{edge.caller} calls the leaf {edge.callee} beside the deeper {', '.join(deeper)}: "
        f"failing every pod of {edge.callee} tests that the main path keeps its SLO and the "
        "side call fails fast (a FAIL says the call is not optional)", mine)


def plan_experiments(edges: Sequence[Edge], findings: Sequence[Finding] = ()
                     ) -> list[PlannedExperiment]:
    """One experiment per edge worth testing and per template that fits it."""
    calls = _callees(edges)
    out: list[PlannedExperiment] = []
    seen_mid: set[str] = set()
    for edge in edges:
        mine = _on_edge(findings, edge)
        route = edge.route
        if not edge.observed:
            if route is not None and route.attempts and edge.callee not in seen_mid:
                seen_mid.add(edge.callee)
                out.append(PlannedExperiment(
                    "pod-kill-midchain", edge, _keys(target_service=edge.callee),
                    f"{route.object_name()} retries {edge.callee} (retries.attempts "
                    f"{route.attempts}): killing one of its pods tests that they cover the "
                    "kill", mine))
            continue
        if not edge.internal:
            continue
        leaf = not calls.get(edge.callee)
        if leaf and route is not None and route.bound_ms:
            out.append(PlannedExperiment(
                "timeout-cascade", edge,
                _keys(target_service=edge.callee, target_caller=edge.caller),
                f"{edge.caller} waits for {edge.callee} at most {format_ms(route.bound_ms)} "
                f"({route.describe_bound()}): a delay beyond it tests that the chain "
                "answers, budgets shrink and no work is orphaned", mine))
        if leaf:
            deeper = [c for c in calls.get(edge.caller, []) if c != edge.callee and calls.get(c)]
            out.append(_side_failure(edge, deeper, mine) if deeper else PlannedExperiment(
                "partition-leaf", edge,
                _keys(target_service=edge.caller, partition_peer=edge.callee),
                f"{edge.callee} is the leaf below {edge.caller}: a partition between them "
                f"tests that {edge.caller} and its callers fail within their timeouts and "
                "leave no orphan work", mine))
        elif edge.callee not in seen_mid:
            seen_mid.add(edge.callee)
            out.append(PlannedExperiment(
                "pod-kill-midchain", edge, _keys(target_service=edge.callee),
                f"{edge.callee} sits mid-chain (called by {edge.caller}, calls "
                f"{', '.join(calls[edge.callee])}): killing one of its pods tests that the "
                "retries cover the kill and traces stay whole", mine))
    return out


def make_plan(namespace: str, services: Iterable[Mapping[str, Any]],
              virtual_services: Iterable[Mapping[str, Any]],
              destination_rules: Iterable[Mapping[str, Any]] = (), *,
              observed: CallTree | None = None, honor_app_headers: bool = False,
              entry_path: str | None = None, notes: Sequence[str] = ()) -> Plan:
    """Audit the namespace's routes along its edges and plan its experiments."""
    names = tuple(sorted(str((s.get("metadata") or {}).get("name")) for s in services))
    if not names:
        raise ConfigurationError(f"namespace '{namespace}' has no Service: nothing to plan "
                                 "(pass --namespace with the namespace of your services)")
    routes = routes_of(virtual_services, namespace)
    edges = choose_edges(names, routes, observed)
    findings = audit(edges, destination_rules, namespace=namespace,
                     honor_app_headers=honor_app_headers)
    extra = list(notes)
    if observed is None:
        extra.append("no call graph was observed: edges are the VirtualServices' hosts "
                      "('* -> service'), so timeout inversions cannot be judged and only "
                      "pod-kill experiments are planned")
    return Plan(namespace, names, tuple(edges), tuple(findings),
                tuple(plan_experiments(edges, findings)),
                "observed" if observed is not None else "virtual-services",
                entry_path or entry_path_of(routes) or "/", tuple(extra))


# -- rendering ------------------------------------------------------------------------------

_TEMPLATE_AIM = "Defaults aim at the reference chain"


def render_experiment(template: Mapping[str, Any], planned: PlannedExperiment, *,
                      namespace: str, defaults: Mapping[str, str]) -> dict[str, Any]:
    """The template with its configuration defaults aimed at the edge and its title and
    description saying so; nothing else changes (its method, probes and controls stay).

    ``defaults``: more configuration defaults (target, kubeconfig, state dir, manifests,
    entry_path, entry_headers, …); only keys the template declares are set.
    """
    doc = copy.deepcopy(dict(template))
    configuration = doc.get("configuration") or {}
    values = {**dict(defaults), "namespace": namespace, **dict(planned.keys)}
    for key, value in values.items():
        declared = configuration.get(key)
        if isinstance(declared, dict) and declared.get("type") == "env":
            declared["default"] = value
    edge = planned.edge
    doc["title"] = f"{doc.get('title', planned.template)} [{edge.name} in {namespace}]"
    found = "".join(f" Finding: {m}" for m in planned.findings)
    aim = ", ".join(f"{k}={v}" for k, v in planned.keys.items() if v)
    # The templates end on "Defaults aim at the reference chain ...": no longer true here.
    text = str(doc.get("description", ""))
    cut = text.find(_TEMPLATE_AIM)
    text = (text[:cut] if cut >= 0 else text + " ").rstrip()
    doc["description"] = (f"{text} Defaults aim at edge {edge.name} of namespace {namespace} "
                          f"({aim}; planned by `meshchaos plan`): {planned.why}; point it "
                          f"elsewhere with --var.{found}")
    return doc


def render_summary(plan: Plan, files: Mapping[str, str]) -> str:
    """``plan.md``: the edges, the findings and the files written (name -> template)."""
    lines = [f"# Experiment plan for namespace `{plan.namespace}`", "",
             f"Services: {', '.join(plan.services)}. Call graph: {plan.graph}. "
             f"Entry path: `{plan.entry_path}`.", ""]
    lines += [f"> {note}" for note in plan.notes] + ([""] if plan.notes else [])
    lines += ["## Edges", "", "| edge | route | bound | observed |", "|---|---|---|---|"]
    for edge in plan.edges:
        route = edge.route
        lines.append(f"| {edge.name} | {route.object_name() if route else 'none'} | "
                     f"{route.describe_bound() if route and route.bound_ms else 'none'} | "
                     f"{'yes' if edge.observed else 'no'} |")
    lines += ["", f"## Findings ({len(plan.findings)})", ""]
    lines += [f"- **{f.rule}** ({f.edge}): {f.message}" for f in plan.findings] or ["None."]
    lines += ["", f"## Experiments ({len(plan.experiments)})", "",
              "Run one with `chaos run <file>` from the repository root.", ""]
    for planned in plan.experiments:
        lines.append(f"- `{planned.file_name}` ({files.get(planned.file_name, planned.template)}"
                     f"): {planned.why}")
    lines += ["", "## Rules", ""] + [f"- `{rule}`: {text}" for rule, text in RULES.items()]
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan) -> str:
    """The plan as JSON (``plan.json``), for scripts and tests."""
    return json.dumps({
        "namespace": plan.namespace, "services": list(plan.services), "graph": plan.graph,
        "entry_path": plan.entry_path, "notes": list(plan.notes),
        "edges": [{"caller": e.caller, "callee": e.callee, "observed": e.observed,
                   "virtual_service": e.route.virtual_service if e.route else None,
                   "bound_ms": e.route.bound_ms if e.route else 0} for e in plan.edges],
        "findings": [f.to_json() for f in plan.findings],
        "experiments": [{"file": p.file_name, "template": p.template, "edge": p.edge.name,
                         "keys": dict(p.keys), "why": p.why} for p in plan.experiments],
    }, indent=2) + "\n"
