"""Access-log parsing: the Envoy format string is compiled, not guessed (§2.3, E-AL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probes.errors import ConfigurationError
from probes.evidence.accesslog import compile_format, hop_of_pod, parse_lines, parse_traceparent
from probes.evidence.formats import EXTENDED_TEXT, ISTIO_JSON, ISTIO_TEXT

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"

ISTIO_LINE = (
    '[2026-11-26T17:25:03.123Z] "GET /api/orders?id=7 HTTP/1.1" 504 UT response_timeout - "-" '
    '0 24 300 - "-" "Mozilla/5.0 (X11; Linux)" "0d384590-2f9e-48ce-a3c3-be5f947efec9" '
    '"orders:8080" "127.0.0.1:40200" outbound|8080||orders.shop.svc.cluster.local '
    '127.0.0.1:51000 10.0.0.1:8080 127.0.0.1:43000 - default')


def test_istio_default_text_format_parses_every_operator() -> None:
    """§2.3: Istio's TEXT format; a quoted value may hold spaces (user agent)."""
    fields = compile_format(ISTIO_TEXT).parse(ISTIO_LINE)
    assert fields is not None
    assert fields["method"] == "GET" and fields["path"] == "/api/orders?id=7"
    assert fields["response_code"] == "504" and fields["response_flags"] == "UT"
    assert fields["user_agent"] == "Mozilla/5.0 (X11; Linux)"
    assert fields["upstream_cluster"] == "outbound|8080||orders.shop.svc.cluster.local"
    assert fields["request_id"] == "0d384590-2f9e-48ce-a3c3-be5f947efec9"


def test_dash_is_an_empty_value() -> None:
    """E-AL: "Empty values print -"."""
    fields = compile_format(ISTIO_TEXT).parse(ISTIO_LINE)
    assert fields is not None
    assert fields["upstream_service_time"] is None and fields["x_forwarded_for"] is None


def test_extended_format_adds_traceparent_budget_and_attempt() -> None:
    """architecture.md Access log: Istio's format + traceparent, expected timeout, attempt."""
    records, skipped = parse_lines(compile_format(EXTENDED_TEXT), "shop",
                                   "orders-7c9d8f6b5-k4m2p",
                                   (DATA / "correct/logs/shop_orders-7c9d8f6b5-k4m2p.log")
                                   .read_text().splitlines())
    assert skipped == 0 and len(records) == 3
    inbound = next(r for r in records if r.direction == "inbound")
    assert inbound.hop == "orders" and inbound.attempt == 1
    assert inbound.expected_rq_timeout_ms is not None and inbound.trace_id is not None
    outbound = [r for r in records if r.direction == "outbound"]
    assert {r.upstream_service for r in outbound} == {"inventory", "ratings"}


def test_lines_that_do_not_match_are_counted_not_parsed() -> None:
    """The istio-proxy log also holds the sidecar's diagnostics (architecture.md)."""
    records, skipped = parse_lines(compile_format(ISTIO_TEXT), "shop", "orders-a-b",
                                   ["sidecar: config version 7 applied", ISTIO_LINE, ""])
    assert (len(records), skipped) == (1, 1)


def test_downstream_disconnect_is_response_code_zero_with_dc() -> None:
    """§1.6: %RESPONSE_CODE% 0 + DC = the downstream client disconnected."""
    line = ISTIO_LINE.replace("504 UT response_timeout", "0 DC downstream_remote_disconnect")
    (record,), _ = parse_lines(compile_format(ISTIO_TEXT), "shop", "orders-a-b", [line])
    assert record.downstream_disconnected and record.flags == frozenset({"DC"})


def test_comma_joined_flags_become_a_set() -> None:
    """§1.6: flags print short names comma-joined (UF,URX)."""
    line = ISTIO_LINE.replace("504 UT", "503 UF,URX")
    (record,), _ = parse_lines(compile_format(ISTIO_TEXT), "shop", "orders-a-b", [line])
    assert record.flags == frozenset({"UF", "URX"}) and record.response_code == 503


def test_json_encoding_keys_the_same_operators() -> None:
    """§2.3: the JSON variant keys the same operators as start_time, response_code, ..."""
    line = json.dumps({"start_time": "2026-11-26T17:25:03.123Z", "response_code": 0,
                       "response_flags": "DC", "request_id": "abc", "duration": 12,
                       "upstream_cluster": "inbound|8080||", "path": "/x", "method": "GET"})
    (record,), _ = parse_lines(compile_format(ISTIO_JSON, "JSON"), "shop", "orders-a-b", [line])
    assert record.response_code == 0 and record.duration_ms == 12
    assert record.direction == "inbound" and record.request_id == "abc"
    assert record.start_us == 1_795_713_903_123_000


def test_custom_json_keys_are_mapped_by_operator() -> None:
    fmt = compile_format({"tp": "%REQ(TRACEPARENT)%", "rid": "%REQ(X-REQUEST-ID)%"}, "JSON")
    fields = fmt.parse('{"tp": "00-' + "a" * 32 + '-' + "b" * 16 + '-01", "rid": "x"}')
    assert fields == {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "request_id": "x"}


@pytest.mark.parametrize(("fmt", "encoding"), [
    pytest.param("no operators here", "TEXT", id="no-operator"),
    pytest.param("%START_TIME%", "XML", id="bad-encoding"),
    pytest.param("%START_TIME%", "JSON", id="json-needs-mapping"),
])
def test_bad_formats_are_refused_with_the_format_named(fmt: str, encoding: str) -> None:
    with pytest.raises(ConfigurationError, match=r"format|encoding"):
        compile_format(fmt, encoding)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param(f"00-{'a' * 32}-{'b' * 16}-01", ("a" * 32, "b" * 16, True), id="sampled"),
    pytest.param(f"00-{'a' * 32}-{'b' * 16}-00", ("a" * 32, "b" * 16, False), id="unsampled"),
    pytest.param(f"00-{'A' * 32}-{'b' * 16}-01", None, id="uppercase"),
    pytest.param(f"00-{'0' * 32}-{'b' * 16}-01", None, id="zero-trace-id"),
    pytest.param(f"00-{'a' * 32}-{'0' * 16}-01", None, id="zero-parent-id"),
    pytest.param(f"ff-{'a' * 32}-{'b' * 16}-01", None, id="version-ff"),
    pytest.param(f"00-{'a' * 32}-{'b' * 16}-01-x", None, id="v00-trailing-data"),
    pytest.param(None, None, id="absent"),
])
def test_traceparent_follows_w3c_level_1(value: str | None,
                                          expected: tuple[str, str, bool] | None) -> None:
    """§4.1: HEXDIGLC only, all-zero ids and version ff forbidden, v00 is exactly 55 chars."""
    assert parse_traceparent(value) == expected


def test_pod_names_map_to_their_workload() -> None:
    """architecture.md: Pods are D-<hash>-<5 alnum>."""
    assert hop_of_pod("orders-5d4f9c7b8-x2x9q") == "orders"
    assert hop_of_pod("istio-ingressgateway-5f8c9d7b6-g1h2j") == "istio-ingressgateway"
    assert hop_of_pod("standalone") == "standalone"


def test_a_line_without_upstream_cluster_is_outbound_when_it_names_another_service() -> None:
    """§1.6 UH (no healthy upstream): no upstream was picked, so the cluster prints "-";
    the authority still names the called service."""
    line = ('[2026-11-26T18:06:48.184Z] "GET /pricing HTTP/1.1" 503 UH no_healthy_upstream - "-" '
            '0 19 0 - "-" "-" "8c55a5ee-fa85-4cb7-bce5-73c79e2fcde2" "pricing:8080" "-" - - '
            '127.0.0.1:34543 127.0.0.1:41432 - pricing-v1 '
            '"00-72a8a20543233f85007094b4b163e76b-1782e5cff7d9002d-01" "-" "-"')
    (record,), _ = parse_lines(compile_format(EXTENDED_TEXT), "shop",
                               "inventory-73de13f8b4-7km57", [line])
    assert record.direction == "outbound" and record.upstream_service == "pricing"
    assert record.flags == frozenset({"UH"}) and record.response_code == 503


def test_the_probes_read_the_default_format_the_local_sidecar_writes() -> None:
    """Istio's default TEXT format (docs/fidelity.md §2.3) is written down twice on purpose:
    where the local sidecar emits it, and where the probes read it on any target. They agree."""
    from localmesh.sidecar.accesslog import DEFAULT_JSON_FORMAT
    from localmesh.sidecar.config import DEFAULT_TEXT_FORMAT

    assert DEFAULT_TEXT_FORMAT == ISTIO_TEXT
    assert DEFAULT_JSON_FORMAT == ISTIO_JSON
