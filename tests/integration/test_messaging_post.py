"""The messaging rules on services that are not the reference chain: the post office of
fixtures/post (post-api and mailer in Ruby with bunny, smtp in Node.js, no OpenTelemetry
anywhere, other names, its own namespace and broker), each of its single-defect twins caught
at its hop from the firehose and the sidecars' lines alone.

One mesh for the module; a twin is switched on with the real kubectl (``set env`` on the
Deployment, then ``rollout status``), as a user would on a cluster. mailer works 40 ms per
letter, one at a time, in every row, so the backlog column's burst leaves letters waiting
past their deadline (RabbitMQ per-message TTL, docs/fidelity.md §9.2) and the duplicates
column's slower load does not (AMQP 0-9-1 at-least-once delivery, §9.3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localmesh.mesh import MeshThread
from localmesh.rabbitmq import SERVER
from probes.messaging import message_flow

from .conftest import ROOT, stop_and_reap

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.skipif(not os.access(SERVER, os.X_OK),
                                 reason=f"{SERVER} missing: apt-get install -y rabbitmq-server"),
              pytest.mark.skipif(subprocess.run(["ruby", "-rbunny", "-e", ""],
                                                capture_output=True, check=False).returncode
                                 != 0 if shutil.which("ruby") else True,
                                 reason="ruby with bunny missing: apt-get install -y ruby-bunny")]

POST = ROOT / "fixtures" / "post" / "k8s"
NS = "post"
MAILER_WORK_MS = "40"


@pytest.fixture(scope="module")
def post_office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("post") / "state"
    thread = MeshThread([POST], state, env_overrides={(NS, "mailer"): {
        "WORK_MS": MAILER_WORK_MS}})
    try:
        thread.start(timeout=60)
        yield state
    finally:
        stop_and_reap(thread)


def kubectl(state: Path, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig"),
           "KUBECACHEDIR": str(state / "kubectl-cache")}
    done = subprocess.run(["kubectl", "-n", NS, *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


def twin(state: Path, deployment: str, defect: str) -> None:
    """POST_DEFECT on one Deployment (the others back to none), rolled out and Ready."""
    for name in ("post-api", "mailer"):
        value = defect if name == deployment else "none"
        kubectl(state, "set", "env", f"deployment/{name}", f"POST_DEFECT={value}")
    for name in ("post-api", "mailer"):
        kubectl(state, "rollout", "status", f"deployment/{name}", "--timeout=40s")


def config(state: Path) -> dict[str, Any]:
    return {"target": "local", "meshchaos_state_dir": str(state), "namespace": NS,
            "entry_path": "/api/letters/7", "run_id": "post-office",
            "broker_service": "broker", "producer_service": "post-api",
            "consumer_service": "mailer"}


def with_duplicates(state: Path) -> dict[str, Any]:
    return message_flow(requests=8, rate=20, duplicates=3, duplicate_after_s=0.05,
                        settle_s=4, timeout_s=25, configuration=config(state))


def with_backlog(state: Path) -> dict[str, Any]:
    return message_flow(requests=16, rate=50, checks=[
        "trace-in-message", "trace-across-queue", "deadline-in-message",
        "no-work-after-deadline"], settle_s=4, timeout_s=25, configuration=config(state))


def failing(result: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(c["name"], c["hop"]) for c in result["checks"] if c["status"] == "failed"}


def test_the_correct_post_office_holds_every_rule_on_broker_and_sidecar_evidence(
        post_office: Path) -> None:
    twin(post_office, "mailer", "none")
    for result in (with_duplicates(post_office), with_backlog(post_office)):
        assert result["passed"], result["reason"]
        assert result["measurements"]["messages"] >= 8
        assert {b for c in result["checks"] for b in c["basis"]} <= {"broker", "sidecar"}
    # the burst left letters waiting past their deadline, and mailer dropped them
    assert result["measurements"]["missed_deadline"] > 0


@pytest.mark.parametrize(("deployment", "defect", "probe", "check"), [
    ("post-api", "drop-traceparent", with_duplicates, "trace-in-message"),
    ("post-api", "fresh-ttl", with_backlog, "deadline-in-message"),
    ("mailer", "new-trace", with_duplicates, "trace-across-queue"),
    ("mailer", "no-dedupe", with_duplicates, "processed-once"),
    ("mailer", "late-work", with_backlog, "no-work-after-deadline"),
], ids=["drop-traceparent@post-api", "fresh-ttl@post-api", "new-trace@mailer",
        "no-dedupe@mailer", "late-work@mailer"])
def test_each_twin_of_the_post_office_fails_its_rule_at_its_hop_and_no_other(
        post_office: Path, deployment: str, defect: str,
        probe: Any, check: str) -> None:
    twin(post_office, deployment, defect)
    result = probe(post_office)
    assert failing(result) == {(check, deployment)}, result["reason"]
