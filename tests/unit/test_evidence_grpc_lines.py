"""Reading a gRPC call off a sidecar's access-log line (docs/fidelity.md §1.9).

A gRPC error is an HTTP 200 whose ``grpc-status`` rides in the trailers, so a line's
``%RESPONSE_CODE%`` alone would call it a success; its deadline is ``grpc-timeout``, which
Envoy writes from the same expected timeout as ``x-envoy-expected-rq-timeout-ms``.
"""

from __future__ import annotations

import pytest

from probes.checks import deadlines
from probes.checks.calls import failed
from probes.checks.findings import Judged, NotJudged
from probes.evidence.accesslog import AccessLogRecord, compile_format, parse_lines
from probes.evidence.collect import merge_lines
from probes.evidence.formats import MESHCHAOS_TEXT
from probes.evidence.request import CallTree, RequestEvidence, SentRequest

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


RID = "d70ffaba-107b-4546-8fa1-9b2f79def84a"
# The fixtures' format before it had the gRPC fields: what a mesh on Istio's own fields logs.
WITHOUT_GRPC_STATUS = MESHCHAOS_TEXT.replace(' %GRPC_STATUS% "%REQ(GRPC-TIMEOUT)%"', "")


def grpc_line(code: int = 200, flags: str = "-", status: str | None = "Ok",
              expected: str = "300", grpc_timeout: str = "300m", at: str = "22.892",
              ms: int = 14, cluster: str = "outbound|8080||pricing.shop.svc.cluster.local",
              authority: str = "pricing:8080") -> AccessLogRecord:
    """One of inventory's sidecar lines; ``status`` None: a format without %GRPC_STATUS%."""
    text = (f'[2026-12-07T09:34:{at}Z] "POST /meshchaos.chain.Hop/Call HTTP/2" {code} {flags} '
            f'via_upstream - "-" 5 116 {ms} {ms} "-" "grpc-python-asyncio/1.85.4" '
            f'"{RID}" "{authority}" "127.0.0.1:45929" '
            f'{cluster} 127.0.0.1:1 127.0.0.1:2 '
            f'127.0.0.1:3 - default "00-{TRACE}-5ff63bfb847dc010-01" "{expected}" "1" "-" '
            f'"{TRACE}"')
    fmt = WITHOUT_GRPC_STATUS
    if status is not None:
        text += f' {status} "{grpc_timeout}"'
        fmt = MESHCHAOS_TEXT
    (record,), bad = parse_lines(compile_format(fmt), "shop", "inventory-a1b2c3d4e5-abcde",
                                 [text])
    assert bad == 0
    return record


def inventory_calling_pricing_twice(first: str | None, second: str | None) -> RequestEvidence:
    """inventory's inbound request and two calls to pricing under it, 30 ms apart."""
    inbound = grpc_line(at="22.880", ms=80, cluster="inbound|8080||", authority="inventory:8080",
                        status=first and "Ok")
    return RequestEvidence.build(SentRequest(TRACE, "5ff63bfb847dc010", True, "", RID), [],
                                 [inbound, grpc_line(at="22.892", ms=5, status=first),
                                  grpc_line(at="22.930", ms=5, status=second)])


CHAIN = CallTree("inventory", {"inventory": ("pricing",)})


def test_calling_again_after_an_unavailable_answer_is_an_app_retry() -> None:
    """A gRPC error is a 200 with grpc-status 14 (§1.9): the second call retried it."""
    outcome = deadlines.no_app_retries(inventory_calling_pricing_twice("Unavailable", "Ok"), CHAIN)
    assert isinstance(outcome, Judged)
    (finding,) = outcome.findings
    assert finding.hop == "inventory" and "again itself" in finding.observed


def test_calling_twice_after_ok_answers_is_no_retry() -> None:
    outcome = deadlines.no_app_retries(inventory_calling_pricing_twice("Ok", "Ok"), CHAIN)
    assert isinstance(outcome, Judged) and not outcome.findings


def test_without_grpc_status_in_the_format_a_repeated_grpc_call_is_not_judged() -> None:
    """Istio's default format has no %GRPC_STATUS%: the first call's 200 may hide an error,
    so the rule must say it could not judge, not pass."""
    outcome = deadlines.no_app_retries(inventory_calling_pricing_twice(None, None), CHAIN)
    assert isinstance(outcome, NotJudged) and "%GRPC_STATUS%" in outcome.reason


@pytest.mark.parametrize("status", ["Unavailable", "UNAVAILABLE", "14", "InvalidCode"])
def test_a_200_carrying_a_grpc_error_is_a_failed_call_in_every_status_format(
        status: str) -> None:
    """%GRPC_STATUS% prints CAMEL_STRING by default, SNAKE_STRING or NUMBER when asked."""
    """Envoy prints InvalidCode for a code above 16: not OK either."""
    record = grpc_line(status=status)
    assert record.grpc_status == (2 if status == "InvalidCode" else 14) and failed(record)


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


def test_a_second_read_of_the_logs_keeps_what_the_first_had() -> None:
    """A pod killed between two reads takes its log along: its lines stay evidence."""
    a, b = grpc_line(at="22.892"), grpc_line(at="22.930")
    assert merge_lines([a], [b, a]) == [a, b]
    assert merge_lines([a, b], [b]) == [a, b]
