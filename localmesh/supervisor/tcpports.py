"""The TCP listeners of one pod's sidecar, chosen when the pod starts.

Istio gives every sidecar an outbound listener per TCP Service port and an inbound filter
chain per TCP port of the pod (docs/fidelity.md §2.5). Here there is no traffic capture: the
supervisor picks a loopback port for each listener and tells both sides, the sidecar by
``--tcp-outbound FQDN:PORT=LISTEN`` / ``--tcp-inbound PORT=LISTEN`` and the app by the
Kubernetes service environment variables (``BROKER_SERVICE_HOST=127.0.0.1``,
``BROKER_SERVICE_PORT_AMQP=<listener>``, ``BROKER_SERVICE_PORT`` for the first port), which
an app on a cluster reads the same way. As on Kubernetes, a Service created after the pod
started is not in its environment; only Services of the pod's own namespace are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from localmesh.documents import KubeObject
from localmesh.protocols import TCP_INBOUND_ANNOTATION, carries_tcp, port_protocol
from localmesh.selectors import match_labels

__all__ = ["TCP_INBOUND_ANNOTATION", "OutboundTcp", "TcpPorts", "env_prefix", "plan_tcp_ports"]



def env_prefix(service: str) -> str:
    """Kubernetes' service variable prefix: upper case, ``-`` as ``_``."""
    return service.upper().replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class OutboundTcp:
    """One outbound TCP listener: the app connects to ``listen`` to reach ``fqdn:port``."""

    fqdn: str
    service: str
    port: int
    port_name: str
    first: bool
    listen: int


@dataclass(frozen=True)
class TcpPorts:
    """Every TCP listener of one pod's sidecar (none for most pods)."""

    inbound_port: int = 0  # the declared container port callers reach (0: no inbound TCP)
    inbound_listen: int = 0
    outbound: tuple[OutboundTcp, ...] = field(default_factory=tuple)

    @property
    def ports(self) -> list[int]:
        listens = [o.listen for o in self.outbound]
        return [self.inbound_listen, *listens] if self.inbound_listen else listens

    def sidecar_args(self) -> list[str]:
        args: list[str] = []
        if self.inbound_listen:
            args += ["--tcp-inbound", f"{self.inbound_port}={self.inbound_listen}"]
        for o in self.outbound:
            args += ["--tcp-outbound", f"{o.fqdn}:{o.port}={o.listen}"]
        return args

    def app_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for o in self.outbound:
            prefix = env_prefix(o.service)
            env[f"{prefix}_SERVICE_HOST"] = "127.0.0.1"
            if o.port_name:
                env[f"{prefix}_SERVICE_PORT_{env_prefix(o.port_name)}"] = str(o.listen)
            if o.first:
                env[f"{prefix}_SERVICE_PORT"] = str(o.listen)
        return env

    def annotations(self) -> dict[str, str]:
        return {TCP_INBOUND_ANNOTATION: str(self.inbound_listen)} if self.inbound_listen else {}


def _selects(service: KubeObject, pod: KubeObject) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and match_labels(selector, labels)


def plan_tcp_ports(services: Iterable[KubeObject], pod: KubeObject, declared_port: int | None,
                   allocate: Callable[[], int]) -> TcpPorts:
    """The TCP listeners of ``pod`` given the Services of its namespace."""
    namespace = str(pod["metadata"].get("namespace") or "default")
    inbound = False
    outbound: list[OutboundTcp] = []
    for svc in sorted(services, key=lambda s: str(s["metadata"]["name"])):
        meta = svc["metadata"]
        if str(meta.get("namespace") or "default") != namespace:
            continue
        ports = (svc.get("spec") or {}).get("ports") or []
        for index, port in enumerate(ports):
            if "port" not in port or not carries_tcp(port_protocol(port)):
                continue
            if _selects(svc, pod):
                inbound = True
            name = str(meta["name"])
            outbound.append(OutboundTcp(f"{name}.{namespace}.svc.cluster.local", name,
                                        int(port["port"]), str(port.get("name") or ""),
                                        index == 0, allocate()))
    if inbound and declared_port:
        return TcpPorts(declared_port, allocate(), tuple(outbound))
    return TcpPorts(outbound=tuple(outbound))
