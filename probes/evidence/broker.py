"""Reaching the broker a messaging experiment names, and turning its firehose on (§9.6).

``broker_service`` names the broker's Service; the probes need two things of it:

- an AMQP URL they can reach: ``broker_url`` when set (on a cluster, e.g. a
  ``kubectl port-forward svc/broker 5672``); on the local mesh, the broker pod's own port
  (pod annotation ``meshchaos.io/app-port``), which like a port-forward bypasses the sidecars,
  so the chaos an experiment puts between the apps and the broker never cuts the evidence;
- tracing on for the vhost (``broker_firehose: enable``): ``rabbitmqctl trace_on`` in a broker
  pod, with ``kubectl exec`` on a cluster and the node's own CLI on the local mesh, which has
  no exec. ``already-on`` leaves the broker alone (a cluster whose operators turn it on).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmesh.statedir import StateDir
from probes import services
from probes.config import Settings
from probes.errors import ConfigurationError, EvidenceError
from probes.target import Target

__all__ = ["Broker", "find_broker"]

APP_PORT_ANNOTATION = "meshchaos.io/app-port"
_LOCAL_URL = "amqp://guest:guest@127.0.0.1:{port}/"


@dataclass(frozen=True)
class Broker:
    """One broker as the probes reach it."""

    service: str
    namespace: str
    url: str
    pod: str
    target: str  # local | kubernetes
    kubeconfig: str | None
    state_dir: str

    def enable_firehose(self) -> str:
        """``rabbitmqctl trace_on`` in the broker pod; returns what the tool said."""
        if self.target == "local":
            from localmesh.rabbitmq import ctl  # the local broker's CLI, on this machine

            data = StateDir(Path(self.state_dir)).data_dir / f"{self.namespace}_{self.pod}"
            try:
                done = ctl(data, "trace_on")
            except Exception as exc:  # ProcessError, OSError, timeout: all say "could not"
                raise EvidenceError(f"broker pod '{self.namespace}/{self.pod}': rabbitmqctl "
                                    f"trace_on failed: {exc}") from exc
        else:
            done = self._kubectl_exec("rabbitmqctl", "trace_on")
        if done.returncode != 0:
            raise EvidenceError(f"broker pod '{self.namespace}/{self.pod}': rabbitmqctl trace_on "
                                f"exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    def _kubectl_exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ConfigurationError("broker_firehose 'enable' on a cluster runs `kubectl exec` "
                                     "in the broker pod, and kubectl is not on PATH (or set "
                                     "broker_firehose=already-on)")
        args = [kubectl, *(["--kubeconfig", self.kubeconfig] if self.kubeconfig else []),
                "-n", self.namespace, "exec", self.pod, "--", *command]
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EvidenceError(f"broker pod '{self.namespace}/{self.pod}': `{' '.join(command)}`"
                                " did not finish in 30 s") from exc


def find_broker(settings: Settings, target: Target, api_client: Any) -> Broker:
    """The broker behind ``broker_service``: a Ready pod of it and the URL to reach it."""
    service = settings.service("broker_service")
    labels, items = services.service_pods(api_client, target.namespace, service,
                                          "broker_service")
    pods = [p for p in items if services.is_ready(p)]
    if not pods:
        raise EvidenceError(f"Service '{target.namespace}/{service}' (broker_service) has no "
                            f"Ready pod (selector {labels})")
    meta = pods[0]["metadata"]
    url = settings.broker_url
    if not url:
        if target.kind != "local":
            raise ConfigurationError(
                f"configuration key 'broker_url' is required on target '{target.kind}': an AMQP "
                f"URL this machine reaches broker '{service}' at, e.g. after `kubectl -n "
                f"{target.namespace} port-forward svc/{service} 5672`, "
                "amqp://guest:guest@127.0.0.1:5672/")
        port = (meta.get("annotations") or {}).get(APP_PORT_ANNOTATION)
        if not port:
            raise EvidenceError(f"broker pod '{target.namespace}/{meta['name']}' has no "
                                f"{APP_PORT_ANNOTATION} annotation: is it a local mesh pod?")
        url = _LOCAL_URL.format(port=port)
    return Broker(service, target.namespace, url, str(meta["name"]), target.kind,
                  target.kubeconfig, settings.state_dir)
