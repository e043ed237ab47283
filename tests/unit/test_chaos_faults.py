"""NetworkChaos → sidecar fault rules, and pod selection modes (docs/fidelity.md §5.1, §5.2)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from localmesh.chaos.faults import SOURCE, TARGET, record_rules
from localmesh.chaos.selection import NoPodSelected, pick, select_pods
from localmesh.chaos.units import parse_duration_ms, parse_rate_bytes_per_s
from localmesh.store import ObjectStore

SRC, DST = ["shop/orders-a"], ["shop/pricing-a", "shop/pricing-b"]


def spec(**extra: Any) -> dict[str, Any]:
    return {"action": "delay", "mode": "all", "selector": {}, "delay": {"latency": "300ms"},
            **extra}


def test_no_target_shapes_all_egress_of_the_selected_pod() -> None:
    """§5.2: "With no target, all egress of the selected pods is affected"."""
    [rule] = record_rules(spec(), "shop/d", SOURCE, SRC, [])
    assert rule["peers"] is None
    assert rule["delay"] == {"latency_ms": 300.0, "jitter_ms": 0.0, "correlation": 0.0}


@pytest.mark.parametrize(("direction", "source_peers", "target_peers"), [
    pytest.param("to", DST, None, id="to"),
    pytest.param("from", None, SRC, id="from"),
    pytest.param("both", DST, SRC, id="both"),
])
def test_direction_decides_which_end_shapes_its_egress(
        direction: str, source_peers: list[str] | None, target_peers: list[str] | None) -> None:
    """§5.2: `to` → on the selected pods toward the targets; `from` → on the target pods
    toward the sources; `both` → both."""
    s = spec(direction=direction, target={"mode": "all", "selector": {}})
    on_source = record_rules(s, "shop/d", SOURCE, SRC, DST)
    on_target = record_rules(s, "shop/d", TARGET, SRC, DST)
    assert [r["peers"] for r in on_source] == ([source_peers] if source_peers else [])
    assert [r["peers"] for r in on_target] == ([target_peers] if target_peers else [])


def test_partition_is_installed_on_both_ends_whatever_the_direction() -> None:
    """§5.2: partition mirrors its DROP rules on the targets; the sidecar black hole needs
    both ends (docs/architecture.md "Sidecar")."""
    s = {"action": "partition", "mode": "all", "selector": {}, "direction": "to",
         "target": {"mode": "all", "selector": {}}}
    assert record_rules(s, "shop/p", SOURCE, SRC, DST)[0]["peers"] == DST
    assert record_rules(s, "shop/p", TARGET, SRC, DST)[0]["peers"] == SRC


def test_external_targets_are_carried_as_hosts_not_pods() -> None:
    """§5.2: externalTargets (IPs/domains) with `to`."""
    s = spec(externalTargets=["example.com"])
    [rule] = record_rules(s, "shop/d", SOURCE, SRC, [])
    assert rule["peers"] == []
    assert rule["external_hosts"] == ["example.com"]


def test_netem_combines_delay_loss_duplicate_corrupt_and_rate() -> None:
    """§5.2: netem = `tc qdisc add … netem delay … loss … duplicate … corrupt … rate …`."""
    s = {"action": "netem", "mode": "all", "selector": {},
         "delay": {"latency": "50ms", "jitter": "10ms", "correlation": "25"},
         "loss": {"loss": "10", "correlation": "5"}, "duplicate": {"duplicate": "1"},
         "corrupt": {"corrupt": "2"}, "rate": {"rate": "1mbit"}}
    [rule] = record_rules(s, "shop/n", SOURCE, SRC, [])
    assert rule["action"] == "netem"
    assert rule["delay"] == {"latency_ms": 50.0, "jitter_ms": 10.0, "correlation": 25.0}
    assert rule["loss"] == {"percent": 10.0, "correlation": 5.0}
    assert rule["duplicate"] == {"percent": 1.0}
    assert rule["corrupt"] == {"percent": 2.0}
    assert rule["bandwidth"]["rate_bytes_per_s"] == 125000.0


@pytest.mark.parametrize(("rate", "bytes_per_s"), [
    pytest.param("8bit", 1.0, id="bit"), pytest.param("1kbit", 125.0, id="kbit"),
    pytest.param("8mbit", 1e6, id="mbit"), pytest.param("1gbit", 1.25e8, id="gbit"),
    pytest.param("100bps", 100.0, id="bps-is-bytes"), pytest.param("1kbps", 1e3, id="kbps"),
    pytest.param("1mbps", 1e6, id="mbps"), pytest.param("2gbps", 2e9, id="gbps"),
])
def test_bandwidth_units_follow_tc(rate: str, bytes_per_s: float) -> None:
    """§5.2: bandwidth rate units bit…tbit, bps…tbps, where bps = bytes/s."""
    assert parse_rate_bytes_per_s(rate) == pytest.approx(bytes_per_s)


def test_bandwidth_rule_carries_rate_limit_and_buffer() -> None:
    """§5.2: bandwidth = tbf rate R burst <buffer> limit L."""
    s = {"action": "bandwidth", "mode": "all", "selector": {},
         "bandwidth": {"rate": "1mbps", "limit": 20971520, "buffer": 10000}}
    [rule] = record_rules(s, "shop/b", SOURCE, SRC, [])
    assert rule["bandwidth"] == {"rate_bytes_per_s": 1e6, "limit_bytes": 20971520,
                                 "buffer_bytes": 10000}


@pytest.mark.parametrize(("text", "ms"), [
    ("300ms", 300.0), ("1.5s", 1500.0), ("1m30s", 90000.0), ("250us", 0.25), ("0", 0.0),
    ("2h", 7_200_000.0)])
def test_go_durations_parse(text: str, ms: float) -> None:
    """Chaos Mesh durations are Go time.ParseDuration strings."""
    assert parse_duration_ms(text) == pytest.approx(ms)


PODS = [{"metadata": {"name": f"p{i}", "namespace": "shop"}} for i in range(10)]


@pytest.mark.parametrize(("mode", "value", "count"), [
    ("one", "", 1), ("all", "", 10), ("fixed", "3", 3), ("fixed", "30", 10),
    ("fixed-percent", "25", 3), ("fixed-percent", "100", 10)])
def test_modes_pick_the_documented_number_of_pods(mode: str, value: str, count: int) -> None:
    """§5.1: one, all, fixed min(value,n), fixed-percent ceil(n·p/100)."""
    assert len(pick(PODS, mode, value, random.Random(1))) == count


def test_random_max_percent_may_select_none_and_never_more_than_the_max() -> None:
    """§5.1: random-max-percent draws an integer p' in [0, value] (FilterObjectsByMode) and
    takes ceil(n·p'/100) pods: with value 30, none once in 31 draws."""
    rng = random.Random(3)
    sizes = [len(pick(PODS, "random-max-percent", "30", rng)) for _ in range(3100)]
    assert set(sizes) == {0, 1, 2, 3}
    assert 50 <= sizes.count(0) <= 150  # 1/31 of 3100 = 100


def _store_with_pods() -> ObjectStore:
    store = ObjectStore()
    for ns in ("shop", "other"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    pods = [("shop", "orders-a", {"app": "orders", "tier": "mid"}, {"team": "a"}, "Running"),
            ("shop", "orders-b", {"app": "orders", "tier": "mid"}, {"team": "b"}, "Pending"),
            ("shop", "pricing-a", {"app": "pricing"}, {}, "Running"),
            ("other", "orders-x", {"app": "orders"}, {}, "Running")]
    for ns, name, labels, notes, phase in pods:
        store.create({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": name, "namespace": ns, "labels": labels,
                                   "annotations": notes},
                      "spec": {"containers": [{"name": "app"}]}, "status": {"phase": phase}})
    return store


@pytest.mark.parametrize(("selector", "names"), [
    pytest.param({"labelSelectors": {"app": "orders"}}, ["orders-a", "orders-b"],
                 id="namespaces-default-to-the-objects"),
    pytest.param({"namespaces": ["shop", "other"], "labelSelectors": {"app": "orders"}},
                 ["orders-a", "orders-b", "orders-x"], id="namespaces"),
    pytest.param({"expressionSelectors": [{"key": "tier", "operator": "Exists"}]},
                 ["orders-a", "orders-b"], id="expressionSelectors"),
    pytest.param({"annotationSelectors": {"team": "b"}}, ["orders-b"], id="annotationSelectors"),
    pytest.param({"fieldSelectors": {"metadata.name": "pricing-a"}}, ["pricing-a"],
                 id="fieldSelectors"),
    pytest.param({"labelSelectors": {"app": "orders"}, "podPhaseSelectors": ["Running"]},
                 ["orders-a"], id="podPhaseSelectors-anded"),
    pytest.param({"pods": {"other": ["orders-x"]}, "labelSelectors": {"app": "pricing"}},
                 ["orders-x"], id="pods-override-the-rest"),
])
def test_selector_fields_are_anded(selector: dict[str, Any], names: list[str]) -> None:
    """§5.1: selector fields are ANDed; pods overrides the rest; empty namespaces → the
    experiment's namespace."""
    chosen = select_pods(_store_with_pods(), {"mode": "all", "selector": selector}, "shop")
    assert sorted(p["metadata"]["name"] for p in chosen) == names


def test_no_match_is_no_pod_is_selected() -> None:
    """§5.1: No match → "no pod is selected"."""
    with pytest.raises(NoPodSelected, match="no pod is selected"):
        select_pods(_store_with_pods(), {"mode": "all", "selector": {
            "labelSelectors": {"app": "nobody"}}}, "shop")


def test_pod_failure_image_annotation_falls_back_to_the_container_name() -> None:
    """§5.3: the image is saved in
    `chaos-mesh-<name>-pod-failure-<container>-{normal|init}-image`, or under the container
    name alone when that key exceeds 63 characters."""
    from localmesh.chaos.effects import image_annotation

    key = image_annotation("fail", "app", "normal")
    assert key == "chaos-mesh-fail-pod-failure-app-normal-image"
    assert image_annotation("pod-failure-side-service-553ec153", "istio-proxy",
                            "init") == "istio-proxy"
