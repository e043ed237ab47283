"""The chain's configuration: CHAIN_CALLS syntax, work distributions, env vars and CLI flags."""

from __future__ import annotations

import random

import pytest

from fixtures.chain.config import (
    CallSpec,
    ChainConfig,
    WorkSpec,
    parse_args,
    parse_calls,
    parse_work,
)
from fixtures.chain.defects import Defect
from fixtures.chain.errors import ChainError, ConfigError


def test_consecutive_par_entries_form_one_parallel_stage() -> None:
    """CHAIN_CALLS: seq entries are stages of their own; consecutive par entries run at once."""
    stages = parse_calls("seq:http://a:8080/a; par:http://b:8080/b;par:http://c:8080/c?x=1;"
                         "seq:http://d:8080/")
    assert [[c.service for c in s] for s in stages] == [["a"], ["b", "c"], ["d"]]
    assert stages[1][1] == CallSpec("par", "http://c:8080/c?x=1", "c", "/c?x=1")
    assert stages[2][0].path == "/"


def test_par_entries_separated_by_a_seq_are_two_stages() -> None:
    """A seq entry ends a parallel group."""
    stages = parse_calls("par:http://a:8080/a;seq:http://b:8080/b;par:http://c:8080/c")
    assert [len(s) for s in stages] == [1, 1, 1]


def test_empty_calls_make_a_leaf() -> None:
    assert parse_calls("") == () and parse_calls(" ; ") == ()


@pytest.mark.parametrize(("value", "problem"), [
    ("http://a:8080/a", r"must start with seq:, par:, seq\?: or par\?:"),
    ("fan:http://a:8080/a", r"must start with seq:, par:, seq\?: or par\?:"),
    ("seq:https://a:8080/a", "needs an http://<service> or grpc:"),
    ("seq:a:8080/a", "needs an http://<service> or grpc:"),
])
def test_malformed_calls_name_the_entry(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_calls(value)
    assert info.value.setting == "CHAIN_CALLS" and isinstance(info.value, ChainError)


@pytest.mark.parametrize(("value", "spec"), [
    ("", WorkSpec("fixed", 0.0)),
    ("12.5", WorkSpec("fixed", 12.5)),
    ("uniform:5-15", WorkSpec("uniform", 5.0, 15.0)),
    ("exp:10", WorkSpec("exp", 10.0)),
])
def test_work_distributions_parse(value: str, spec: WorkSpec) -> None:
    assert parse_work(value) == spec


@pytest.mark.parametrize("value", ["uniform:15-5", "uniform:5", "exp:x", "normal:1,2", "-3"])
def test_bad_work_distributions_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="CHAIN_WORK_AFTER="):
        parse_work(value, "CHAIN_WORK_AFTER")


def test_work_samples_stay_in_their_distribution() -> None:
    """uniform stays within its bounds; exp has the configured mean (within 10% over 4000)."""
    rng = random.Random(7)
    uniform = [WorkSpec("uniform", 5, 15).sample_ms(rng) for _ in range(1000)]
    assert min(uniform) >= 5 and max(uniform) <= 15
    exp = [WorkSpec("exp", 10).sample_ms(rng) for _ in range(4000)]
    assert 9 <= sum(exp) / len(exp) <= 11
    assert WorkSpec("fixed", 3).sample_ms(rng) == 3


def test_environment_configures_everything() -> None:
    """architecture.md "Pods as processes": PORT, POD_NAME, POD_NAMESPACE, POD_IP,
    OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, HTTP_PROXY come from the supervisor."""
    env = {
        "PORT": "41000", "POD_NAME": "orders-5d4f9c7b8-x2x9q", "POD_NAMESPACE": "shop",
        "POD_IP": "127.0.0.1", "OTEL_SERVICE_NAME": "orders",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/", "HTTP_PROXY": "http://127.0.0.1:9001",
        "CHAIN_CALLS": "seq:http://inventory:8080/inventory", "CHAIN_WORK_BEFORE": "uniform:1-2",
        "CHAIN_STATUS": "201", "CHAIN_BODY_BYTES": "512", "CHAIN_DEFECT": "no-cancel",
        "CHAIN_MARGIN_MS": "7.5", "CHAIN_DEFAULT_BUDGET_MS": "900",
    }
    cfg = parse_args([], env)
    assert cfg == ChainConfig(
        name="orders", port=41000, host="127.0.0.1",
        stages=parse_calls("seq:http://inventory:8080/inventory"),
        work_before=WorkSpec("uniform", 1, 2), status=201, body_bytes=512,
        defect=Defect.NO_CANCEL, margin_ms=7.5, default_budget_ms=900,
        proxy="http://127.0.0.1:9001", otlp_endpoint="http://127.0.0.1:4318",
        pod="orders-5d4f9c7b8-x2x9q", namespace="shop",
    )


def test_flags_override_the_environment() -> None:
    cfg = parse_args(["--name", "pricing", "--port", "0", "--defect", "drop-b3",
                      "--proxy", "", "--calls", "par:http://x:1/x"],
                     {"CHAIN_NAME": "other", "PORT": "9", "HTTP_PROXY": "http://127.0.0.1:1"})
    assert (cfg.name, cfg.port, cfg.defect, cfg.proxy) == ("pricing", 0, Defect.DROP_B3, None)
    assert cfg.stages[0][0].service == "x"


def test_defaults_listen_on_all_interfaces_without_pod_ip() -> None:
    """On a cluster the pod IP is not in the env: listen on 0.0.0.0:8080, no proxy, no export."""
    cfg = parse_args([], {})
    assert (cfg.host, cfg.port, cfg.proxy, cfg.otlp_endpoint, cfg.name) == (
        "0.0.0.0", 8080, None, None, "chain")


@pytest.mark.parametrize(("env", "setting"), [
    ({"PORT": "http"}, "PORT"),
    ({"CHAIN_STATUS": "700"}, "CHAIN_STATUS"),
    ({"CHAIN_MARGIN_MS": "-1"}, "CHAIN_MARGIN_MS"),
    ({"CHAIN_BODY_BYTES": "1.5"}, "CHAIN_BODY_BYTES"),
    ({"CHAIN_DEFECT": "bogus"}, "CHAIN_DEFECT"),
    ({"CHAIN_HTTP_CLIENT": "curl"}, "CHAIN_HTTP_CLIENT"),
])
def test_bad_values_name_their_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args([], env)
    assert info.value.setting == setting and f"{setting}=" in str(info.value)


def test_a_question_mark_after_the_mode_marks_an_optional_call() -> None:
    stages = parse_calls("par:http://a:8080/a;par?:http://b:8080/b")
    assert [c.optional for c in stages[0]] == [False, True]
    assert stages[0][1].mode == "par"


def test_a_publish_url_may_make_its_events_unscoped() -> None:
    """``?deadline=none``: an event processed whatever its requester does, with no TTL and no
    x-deadline-unix-ms (docs/fidelity.md §9.2); the default carries the request's deadline."""
    scoped = parse_args([], {"CHAIN_PUBLISH": "amqp://broker:5672/chain.events/work"})
    unscoped = parse_args([], {"CHAIN_PUBLISH":
                               "?amqp://broker:5672/chain.events/work?deadline=none"})
    assert scoped.publish is not None and scoped.publish.scoped
    assert unscoped.publish is not None and not unscoped.publish.scoped
    assert unscoped.publish.optional
    with pytest.raises(ConfigError, match="deadline=request\\|none"):
        parse_args([], {"CHAIN_PUBLISH": "amqp://broker:5672/chain.events/work?ttl=5"})


def test_a_worker_takes_its_concurrency_and_serves_http_only() -> None:
    """A worker's readiness is its /healthz: a gRPC server would have none to give."""
    cfg = parse_args([], {"CHAIN_CONSUME": "amqp://broker:5672/chain.work",
                          "CHAIN_CONCURRENCY": "3"})
    assert cfg.concurrency == 3 and parse_args([], {}).concurrency == 1
    with pytest.raises(ConfigError, match=r"CHAIN_PROTOCOL.*serves /healthz over http"):
        parse_args([], {"CHAIN_CONSUME": "amqp://broker:5672/chain.work",
                        "CHAIN_PROTOCOL": "grpc"})
    with pytest.raises(ConfigError, match="CHAIN_CONCURRENCY"):
        parse_args([], {"CHAIN_CONCURRENCY": "0"})
