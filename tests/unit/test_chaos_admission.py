"""Chaos Mesh's validating-webhook rules on the local store (docs/fidelity.md §5.2, §5.3, §5.4).

Each refusal must be a 422 ``Invalid`` naming the field and quoting the value.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localmesh.chaos import install_chaos_admission
from localmesh.chaos.units import parse_mode_value
from localmesh.errors import ChaosSpecError, Invalid, UnknownMode
from localmesh.store import ObjectStore

Obj = dict[str, Any]
SEL = {"labelSelectors": {"app": "pricing"}}
TARGET = {"mode": "all", "selector": {"labelSelectors": {"app": "orders"}}}


def network(name: str = "leaf-delay", **spec: Any) -> Obj:
    base = {"action": "delay", "mode": "all", "selector": SEL, "delay": {"latency": "300ms"}}
    return {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
            "metadata": {"name": name, "namespace": "shop"}, "spec": {**base, **spec}}


def podchaos(**spec: Any) -> Obj:
    base = {"action": "pod-kill", "mode": "one", "selector": SEL}
    return {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "PodChaos",
            "metadata": {"name": "pc", "namespace": "shop"}, "spec": {**base, **spec}}


@pytest.fixture
def store() -> ObjectStore:
    s = ObjectStore()
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    install_chaos_admission(s)
    return s


REFUSED = [
    pytest.param(network(delay={"latency": "2 s"}), "spec.delay.latency",
                 "NetworkChaos 'leaf-delay': spec.delay.latency '2 s' is not a duration",
                 id="latency-not-a-duration"),
    pytest.param(network(delay={"latency": "10ms", "jitter": "5 parsecs"}), "spec.delay.jitter",
                 "'5 parsecs' is not a duration", id="jitter-not-a-duration"),
    pytest.param(network(duration="forever"), "spec.duration", "'forever' is not a duration",
                 id="duration-not-a-duration"),
    pytest.param(network(delay={"latency": "1ms", "correlation": "150"}),
                 "spec.delay.correlation", "'150' is not a percentage", id="correlation-over-100"),
    pytest.param(network(delay={"latency": "1ms", "reorder": {"reorder": "x", "gap": 5}}),
                 "spec.delay.reorder.reorder", "'x' is not a percentage", id="reorder-percent"),
    pytest.param(network(action="loss", loss={"loss": "thirty"}), "spec.loss.loss",
                 "'thirty' is not a percentage", id="loss-not-a-percentage"),
    pytest.param(network(action="delay", delay=None), "spec.delay",
                 "Required value when action is 'delay'", id="delay-block-missing"),
    pytest.param(network(direction="from"), "spec.direction",
                 "'from' needs spec.target for action 'delay'", id="from-needs-target"),
    pytest.param(network(direction="both"), "spec.direction",
                 "'both' needs spec.target", id="both-needs-target"),
    pytest.param(network(direction="both", target=TARGET, externalTargets=["example.com"]),
                 "spec.externalTargets", "'example.com' only works with direction 'to'",
                 id="external-targets-only-with-to"),
    pytest.param(network(action="partition", delay=None, direction="from"), "spec.direction",
                 "'from' needs spec.target or spec.externalTargets for action 'partition'",
                 id="partition-from-needs-target-or-external"),
    pytest.param(network(mode="fixed", value="0"), "spec.value",
                 "'0' must be greater than 0 (mode 'fixed')", id="fixed-zero"),
    pytest.param(network(mode="fixed", value="two"), "spec.value", "'two' is not an integer",
                 id="fixed-not-integer"),
    pytest.param(network(mode="fixed-percent", value="0"), "spec.value",
                 "'0' must be in (0, 100]", id="fixed-percent-zero"),
    pytest.param(network(mode="fixed-percent", value="101"), "spec.value",
                 "'101' must be in (0, 100]", id="fixed-percent-over-100"),
    pytest.param(network(mode="random-max-percent", value="-1"), "spec.value",
                 "'-1' must be in (0, 100]", id="random-max-percent-negative"),
    pytest.param(network(mode="random-max-percent", value="0"), "spec.value",
                 "'0' must be in (0, 100]", id="random-max-percent-zero"),
    pytest.param(network(mode="fixed-percent", value="12.5"), "spec.value",
                 "'12.5' is not an integer percentage", id="percent-not-integer"),
    pytest.param(network(mode="sometimes"), "spec.mode", "'sometimes' is not a mode",
                 id="unknown-mode"),
    pytest.param(network(direction="to", target={"mode": "fixed", "value": "-2",
                                                 "selector": SEL}),
                 "spec.target.value", "'-2' must be greater than 0", id="target-mode-value"),
    pytest.param(network(action="bandwidth", delay=None,
                         bandwidth={"rate": "1 megabyte", "limit": 100, "buffer": 100}),
                 "spec.bandwidth.rate", "'1 megabyte' is not a rate", id="bandwidth-rate-units"),
    pytest.param(network(action="bandwidth", delay=None,
                         bandwidth={"rate": "1mbps", "limit": 0, "buffer": 100}),
                 "spec.bandwidth.limit", "'0' must be an integer >= 1", id="bandwidth-limit"),
    pytest.param(network(action="bandwidth", delay=None,
                         bandwidth={"rate": "1mbps", "limit": 10, "buffer": 0}),
                 "spec.bandwidth.buffer", "'0' must be an integer >= 1", id="bandwidth-buffer"),
    pytest.param(podchaos(action="container-kill"), "spec.containerNames",
                 "Required value when action is 'container-kill'",
                 id="container-kill-needs-container-names"),
    pytest.param(podchaos(action="pod-failure"), "spec.duration",
                 "Required value when action is 'pod-failure'", id="pod-failure-needs-duration"),
    pytest.param(podchaos(gracePeriod=-1), "spec.gracePeriod", "'-1' must be an integer >= 0",
                 id="negative-grace-period"),
]


@pytest.mark.parametrize(("obj", "field", "fragment"), REFUSED)
def test_webhook_rule_refuses_with_422_naming_the_field(store: ObjectStore, obj: Obj,
                                                        field: str, fragment: str) -> None:
    """§5.2/§5.3 webhook rules: the object is refused as Invalid (422) naming the field."""
    spec = obj["spec"]
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    with pytest.raises(Invalid) as exc:
        store.create(obj)
    assert exc.value.code == 422
    assert exc.value.field == field
    assert fragment in str(exc.value)
    assert str(exc.value).startswith(f"{obj['kind']} '{obj['metadata']['name']}': {field}")
    status = exc.value.to_status()
    assert status["reason"] == "Invalid"


def test_an_unknown_mode_is_told_from_a_bad_value_by_its_type() -> None:
    """The hook blames spec.mode for an UnknownMode and spec.value for any other
    ChaosSpecError (above, unknown-mode and fixed-not-integer)."""
    with pytest.raises(UnknownMode):
        parse_mode_value("sometimes", "")
    with pytest.raises(ChaosSpecError) as exc:
        parse_mode_value("fixed", "two")
    assert not isinstance(exc.value, UnknownMode)


ACCEPTED = [
    pytest.param(network(), id="plain-delay"),
    pytest.param(network(delay={"latency": "1.5s", "jitter": "20ms", "correlation": "25"},
                         duration="1m30s"), id="delay-jitter-compound-duration"),
    pytest.param(network(direction="both", target=TARGET), id="both-with-target"),
    pytest.param(network(action="partition", delay=None, direction="both", target=TARGET),
                 id="partition-both"),
    pytest.param(network(action="partition", delay=None, externalTargets=["1.2.3.4"]),
                 id="partition-to-external"),
    pytest.param(network(action="bandwidth", delay=None,
                         bandwidth={"rate": "8mbit", "limit": 20971520, "buffer": 10000}),
                 id="bandwidth"),
    pytest.param(network(mode="random-max-percent", value="100"), id="random-max-percent-100"),
    pytest.param(podchaos(action="pod-failure", duration="30s"), id="pod-failure"),
    pytest.param(podchaos(action="container-kill", containerNames=["app"]), id="container-kill"),
]


@pytest.mark.parametrize("obj", ACCEPTED)
def test_valid_chaos_is_admitted(store: ObjectStore, obj: Obj) -> None:
    """The webhook admits what Chaos Mesh admits (§5.2/§5.3)."""
    spec = obj["spec"]
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    stored = store.create(copy.deepcopy(obj))
    assert stored["spec"] == spec


def test_spec_update_is_refused_but_metadata_updates_pass(store: ObjectStore) -> None:
    """§5.4: "Spec updates are rejected." Annotations (pause) and finalizers still change."""
    store.create(network())
    with pytest.raises(Invalid) as exc:
        store.patch("chaos-mesh.org", "networkchaos", "shop", "leaf-delay",
                    {"spec": {"delay": {"latency": "1s"}}})
    assert exc.value.code == 422
    assert exc.value.field == "spec"
    assert "Cannot update chaos spec" in str(exc.value)
    pause = {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": "true"}}}
    patched = store.patch("chaos-mesh.org", "networkchaos", "shop", "leaf-delay", pause)
    assert patched["spec"]["delay"]["latency"] == "300ms"
