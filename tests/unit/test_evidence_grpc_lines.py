"""Reading a gRPC call off a sidecar's access-log line (docs/fidelity.md §1.9).

A gRPC error is an HTTP 200 whose ``grpc-status`` rides in the trailers, so a line's
``%RESPONSE_CODE%`` alone would call it a success; its deadline is ``grpc-timeout``, which
Envoy writes from the same expected timeout as ``x-envoy-expected-rq-timeout-ms``.
"""

from __future__ import annotations

import pytest

from probes.checks.calls import failed
from probes.evidence.accesslog import AccessLogRecord, compile_format, parse_lines
from probes.evidence.formats import MESHCHAOS_TEXT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def grpc_line(code: int = 200, flags: str = "-", status: str = "Ok", expected: str = "300",
              grpc_timeout: str = "300m") -> AccessLogRecord:
    text = (f'[2026-12-07T09:34:22.892Z] "POST /meshchaos.chain.Hop/Call HTTP/2" {code} {flags} '
            f'via_upstream - "-" 5 116 14 14 "-" "grpc-python-asyncio/1.85.4" '
            f'"d70ffaba-107b-4546-8fa1-9b2f79def84a" "pricing:8080" "127.0.0.1:45929" '
            f'outbound|8080||pricing.shop.svc.cluster.local 127.0.0.1:1 127.0.0.1:2 '
            f'127.0.0.1:3 - default "00-{TRACE}-5ff63bfb847dc010-01" "{expected}" "1" "-" '
            f'"{TRACE}" {status} "{grpc_timeout}"')
    (record,), bad = parse_lines(compile_format(MESHCHAOS_TEXT), "shop",
                                 "inventory-a1b2c3d4e5-abcde", [text])
    assert bad == 0
    return record


@pytest.mark.parametrize("status", ["Unavailable", "UNAVAILABLE", "14"])
def test_a_200_carrying_a_grpc_error_is_a_failed_call_in_every_status_format(
        status: str) -> None:
    """%GRPC_STATUS% prints CAMEL_STRING by default, SNAKE_STRING or NUMBER when asked."""
    record = grpc_line(status=status)
    assert record.grpc_status == 14 and failed(record)


def test_a_200_with_grpc_status_ok_is_a_good_answer() -> None:
    assert not failed(grpc_line())


def test_an_http_line_has_no_grpc_status_and_its_200_is_good() -> None:
    assert not failed(grpc_line(status="-"))
    assert grpc_line(status="-").grpc_status is None


def test_a_route_timeout_logged_as_504_ut_fails_whatever_the_grpc_status() -> None:
    """istio#1667: a gRPC stream's route timeout is logged as 504 UT (§1.9)."""
    assert failed(grpc_line(code=504, flags="UT", status="Unavailable"))


@pytest.mark.parametrize(("expected", "grpc_timeout", "budget"), [
    ("300", "300m", 300), ("-", "250m", 250), ("300", "120000u", 120), ("-", "-", None),
    ("300", "123456789m", 300),  # 9 digits: not a grpc-timeout (Envoy's getGrpcTimeout)
])
def test_the_budget_of_a_grpc_line_is_the_smaller_of_both_headers(
        expected: str, grpc_timeout: str, budget: int | None) -> None:
    assert grpc_line(expected=expected, grpc_timeout=grpc_timeout).budget_ms == budget
