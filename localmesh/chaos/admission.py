"""Chaos Mesh's admission webhook rules, as store admission hooks.

The CRD schema (types, enums, required fields) is checked by
``localmesh.validation``; these hooks add what Chaos Mesh's validating webhook
checks on top (docs/fidelity.md §5.2, §5.3, §5.4):

- mode/value consistency for the selector and the target;
- durations, percentages and bandwidth rates that parse;
- NetworkChaos: non-partition ``from``/``both`` need a ``target``;
  ``externalTargets`` only with ``to``; partition ``from``/``both`` need a
  ``target`` or ``externalTargets``;
- PodChaos: ``container-kill`` needs ``containerNames``, ``pod-failure`` needs
  a ``duration``, ``gracePeriod`` ≥ 0;
- HTTPChaos: ``port`` > 0, ``delay`` a duration, ``method`` one of Go's ``net/http``
  method names for a ``Request`` target (§5.5);
- spec updates are refused.

Every refusal is an ``Invalid`` (422) naming the field and the value, e.g.
``NetworkChaos 'leaf-delay': spec.delay.latency '2 s' is not a duration``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from localmesh.chaos.units import (
    parse_duration_ms,
    parse_mode_value,
    parse_percent,
    parse_rate_bytes_per_s,
)
from localmesh.documents import KubeObject
from localmesh.errors import Invalid, UnknownMode
from localmesh.store import ObjectStore

__all__ = ["GROUP", "install_chaos_admission", "validate_chaos"]

GROUP = "chaos-mesh.org"

_NETEM_ACTIONS = ("netem", "delay", "loss", "duplicate", "corrupt", "partition", "bandwidth")
_POD_ACTIONS = ("pod-kill", "pod-failure", "container-kill")
# httpchaos_webhook.go HTTPMethod.Validate: Go's http.Method* constants, compared exactly.
_HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
_PERCENT_FIELDS = {
    "delay": ("correlation",), "loss": ("loss", "correlation"),
    "duplicate": ("duplicate", "correlation"), "corrupt": ("corrupt", "correlation"),
}


class _Refusal:
    """Builds the Invalid errors of one object, so each names kind, object and field."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        self.kind = str(obj.get("kind", ""))
        self.name = str((obj.get("metadata") or {}).get("name", ""))

    def error(self, field: str, message: str) -> Invalid:
        return Invalid(f"{self.kind} '{self.name}': {field} {message}", kind=self.kind,
                       name=self.name, field=field)

    def check(self, field: str, value: Any, parse: Callable[[str], object]) -> None:
        """Parse a string field; a failure is an Invalid quoting the value."""
        if value is None:
            return
        try:
            parse(str(value))
        except ValueError as exc:
            raise self.error(field, f"'{value}' {exc}") from None


def _check_selection(refuse: _Refusal, spec: Mapping[str, Any], prefix: str) -> None:
    mode = str(spec.get("mode") or "")
    if not mode:
        raise refuse.error(f"{prefix}mode", "Required value")
    value = str(spec.get("value") or "")
    try:
        parse_mode_value(mode, value)
    except UnknownMode as exc:
        raise refuse.error(f"{prefix}mode", f"'{mode}' {exc}") from None
    except ValueError as exc:
        raise refuse.error(f"{prefix}value", f"'{value}' {exc}") from None


def _check_network(refuse: _Refusal, spec: Mapping[str, Any]) -> None:
    action = spec.get("action")
    if action not in _NETEM_ACTIONS:
        raise refuse.error("spec.action", f"'{action}' is not a NetworkChaos action")
    if action in ("delay", "loss", "duplicate", "corrupt", "bandwidth") and not spec.get(action):
        raise refuse.error(f"spec.{action}", f"Required value when action is '{action}'")
    delay = spec.get("delay") or {}
    refuse.check("spec.delay.latency", delay.get("latency"), parse_duration_ms)
    refuse.check("spec.delay.jitter", delay.get("jitter"), parse_duration_ms)
    reorder = delay.get("reorder") or {}
    refuse.check("spec.delay.reorder.reorder", reorder.get("reorder"), parse_percent)
    refuse.check("spec.delay.reorder.correlation", reorder.get("correlation"), parse_percent)
    for block, fields in _PERCENT_FIELDS.items():
        for name in fields:
            refuse.check(f"spec.{block}.{name}", (spec.get(block) or {}).get(name), parse_percent)
    _check_bandwidth(refuse, spec.get("bandwidth"), "spec.bandwidth")
    if (spec.get("rate") or {}).get("rate") is not None:
        refuse.check("spec.rate.rate", spec["rate"]["rate"], parse_rate_bytes_per_s)
    _check_direction(refuse, spec, str(action))
    if spec.get("target"):
        _check_selection(refuse, spec["target"], "spec.target.")


def _check_bandwidth(refuse: _Refusal, band: Mapping[str, Any] | None, prefix: str) -> None:
    if not band:
        return
    if band.get("rate") is None:
        raise refuse.error(f"{prefix}.rate", "Required value")
    refuse.check(f"{prefix}.rate", band["rate"], parse_rate_bytes_per_s)
    for name in ("limit", "buffer"):
        value = band.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise refuse.error(f"{prefix}.{name}", f"'{value}' must be an integer >= 1")
    if band.get("peakrate") is not None:
        refuse.check(f"{prefix}.peakrate", band["peakrate"], parse_rate_bytes_per_s)


def _check_direction(refuse: _Refusal, spec: Mapping[str, Any], action: str) -> None:
    direction = spec.get("direction") or "to"
    if direction not in ("to", "from", "both"):
        raise refuse.error("spec.direction", f"'{direction}' is not one of to, from, both")
    has_target = bool(spec.get("target"))
    external = spec.get("externalTargets") or []
    if action == "partition":
        if direction in ("from", "both") and not (has_target or external):
            raise refuse.error("spec.direction", f"'{direction}' needs spec.target or "
                               "spec.externalTargets for action 'partition'")
    elif direction in ("from", "both") and not has_target:
        raise refuse.error("spec.direction", f"'{direction}' needs spec.target for "
                           f"action '{action}'")
    if external and direction != "to":
        raise refuse.error("spec.externalTargets", f"'{', '.join(map(str, external))}' only "
                           f"works with direction 'to', not '{direction}'")


def _check_pod(refuse: _Refusal, spec: Mapping[str, Any]) -> None:
    action = spec.get("action")
    if action not in _POD_ACTIONS:
        raise refuse.error("spec.action", f"'{action}' is not a PodChaos action")
    if action == "container-kill" and not spec.get("containerNames"):
        raise refuse.error("spec.containerNames", "Required value when action is "
                           "'container-kill'")
    if action == "pod-failure" and not spec.get("duration"):
        raise refuse.error("spec.duration", "Required value when action is 'pod-failure'")
    grace = spec.get("gracePeriod")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        raise refuse.error("spec.gracePeriod", f"'{grace}' must be an integer >= 0")


def _check_http(refuse: _Refusal, spec: Mapping[str, Any]) -> None:
    """``api/v1alpha1/httpchaos_webhook.go``: Port, Delay and HTTPMethod validators."""
    target = spec.get("target")
    if target not in ("Request", "Response"):
        raise refuse.error("spec.target", f"'{target}' target {target} is not supported")
    port = spec.get("port") or 0
    if not isinstance(port, int) or isinstance(port, bool) or port <= 0:
        # Port.Validate runs on the zero value too: an absent port is refused as port 0
        raise refuse.error("spec.port", f"'{port}' port {port} is not supported")
    delay = spec.get("delay")
    if delay is not None:
        try:
            parse_duration_ms(str(delay))
        except ValueError:
            raise refuse.error("spec.delay", f"'{delay}' invalid duration {delay}") from None
    method = spec.get("method")
    if method is not None and target == "Request" and method not in _HTTP_METHODS:
        raise refuse.error("spec.method", f"'{method}' method {method} is not supported")
    body = (spec.get("patch") or {}).get("body")
    if body is not None and body.get("type") != "JSON":
        raise refuse.error("spec.patch.body.type", f"'{body.get('type')}' is not JSON, the "
                           "only patch type chaos-tproxy has")


def validate_chaos(obj: KubeObject) -> None:
    """Apply the webhook rules of one NetworkChaos, PodChaos or HTTPChaos; raise Invalid on
    the first."""
    refuse = _Refusal(obj)
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise refuse.error("spec", "Required value")
    _check_selection(refuse, spec, "spec.")
    refuse.check("spec.duration", spec.get("duration"), parse_duration_ms)
    if refuse.kind == "NetworkChaos":
        _check_network(refuse, spec)
    elif refuse.kind == "HTTPChaos":
        _check_http(refuse, spec)
    else:
        _check_pod(refuse, spec)


def _hook(operation: str, new: KubeObject, old: KubeObject | None) -> None:
    if operation == "UPDATE" and old is not None:
        if new.get("spec") != old.get("spec"):
            raise _Refusal(new).error("spec", "Cannot update chaos spec: a chaos experiment's "
                                      "spec is immutable (delete and re-create it)")
        return
    validate_chaos(new)


def install_chaos_admission(store: ObjectStore) -> None:
    """Register the webhook rules for NetworkChaos, PodChaos and HTTPChaos on the store."""
    store.add_admission(GROUP, "networkchaos", _hook)
    store.add_admission(GROUP, "podchaos", _hook)
    store.add_admission(GROUP, "httpchaos", _hook)
