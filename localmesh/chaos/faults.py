"""NetworkChaos spec → the sidecar fault rules of docs/architecture.md ("Sidecar").

tc shapes egress only (docs/fidelity.md §5.2): ``to`` acts on the selected
pods for traffic to the targets, ``from`` on the target pods for traffic to the
sources, ``both`` on both; no target means all egress of the selected pods,
including the responses they send. A partition is a silent black hole, which the
sidecars can only emulate if both ends drop, so it is installed on the selected
pods and on their targets whatever the direction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localmesh.chaos.units import parse_duration_ms, parse_percent, parse_rate_bytes_per_s
from localmesh.documents import BandwidthDoc, DelayDoc, FaultParamsDoc, FaultRuleDoc

__all__ = ["SOURCE", "TARGET", "record_rules", "rule_params"]

SOURCE, TARGET = ".", ".Target"
# netem's `rate` has no burst settings: shape with a one-packet bucket and a deep queue.
_NETEM_RATE_BUFFER, _NETEM_RATE_LIMIT = 1500, 20 * 1024 * 1024


def _percent(block: Mapping[str, Any], name: str) -> float:
    return parse_percent(str(block.get(name) or "0"))


def _delay(spec: Mapping[str, Any]) -> DelayDoc:
    delay = spec["delay"]
    return {"latency_ms": parse_duration_ms(str(delay["latency"])),
            "jitter_ms": parse_duration_ms(str(delay.get("jitter") or "0")),
            "correlation": _percent(delay, "correlation")}


def _bandwidth(spec: Mapping[str, Any]) -> BandwidthDoc:
    band = spec["bandwidth"]
    return {"rate_bytes_per_s": parse_rate_bytes_per_s(str(band["rate"])),
            "limit_bytes": int(band["limit"]), "buffer_bytes": int(band["buffer"])}


def rule_params(spec: Mapping[str, Any]) -> FaultParamsDoc:
    """The action parameters of a rule: the sub-blocks the action uses, in rule units.

    ``spec`` passed admission (localmesh.chaos.admission), so its action is one of
    Chaos Mesh's NetworkChaos actions.
    """
    params: FaultParamsDoc = {"action": spec["action"]}
    _add_params(spec, params)
    return params


def _add_params(spec: Mapping[str, Any], params: FaultParamsDoc) -> None:
    action = params["action"]
    if spec.get("delay") and action in ("delay", "netem"):
        params["delay"] = _delay(spec)
    if spec.get("loss") and action in ("loss", "netem"):
        params["loss"] = {"percent": _percent(spec["loss"], "loss"),
                          "correlation": _percent(spec["loss"], "correlation")}
    if spec.get("duplicate") and action in ("duplicate", "netem"):
        params["duplicate"] = {"percent": _percent(spec["duplicate"], "duplicate")}
    if spec.get("corrupt") and action in ("corrupt", "netem"):
        params["corrupt"] = {"percent": _percent(spec["corrupt"], "corrupt")}
    if action == "bandwidth":
        params["bandwidth"] = _bandwidth(spec)
    if action == "netem" and (spec.get("rate") or {}).get("rate"):
        params["bandwidth"] = {
            "rate_bytes_per_s": parse_rate_bytes_per_s(str(spec["rate"]["rate"])),
            "limit_bytes": _NETEM_RATE_LIMIT, "buffer_bytes": _NETEM_RATE_BUFFER}


def record_rules(spec: Mapping[str, Any], chaos_id: str, selector_key: str,
                 sources: list[str], targets: list[str]) -> list[FaultRuleDoc]:
    """The rules one record's pod gets (possibly none: e.g. a source record of ``from``).

    ``sources``/``targets`` are ``"ns/name"`` keys of the selected and target pods.
    """
    action = spec["action"]
    direction = spec.get("direction") or "to"
    external = [str(e) for e in spec.get("externalTargets") or []]
    has_target = bool(spec.get("target"))
    if selector_key == SOURCE:
        acts = action == "partition" or direction in ("to", "both")
        peers: list[str] | None = targets if has_target else ([] if external else None)
    else:
        acts = action == "partition" or direction in ("from", "both")
        peers = sources
    if not acts:
        return []
    rule: FaultRuleDoc = {"id": chaos_id, "action": action, "peers": peers}
    _add_params(spec, rule)
    if external and selector_key == SOURCE:
        # Outside hosts are not pods: the sidecar matches them by destination host.
        rule["external_hosts"] = external
    return [rule]
