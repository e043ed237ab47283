"""From a pod object to the processes that run it: command lines, environment, ports.

The annotation contract (docs/architecture.md "Pods as processes"):
``meshchaos.io/local-command`` is the app's command line (``shlex`` split; a
leading ``python``/``python3`` means this mesh's interpreter), optional
``meshchaos.io/local-cwd`` its working directory, relative to
``meshchaos.io/local-cwd-base`` (the folder of the manifest file the mesh loaded the
Deployment from, which the mesh adds beside it) or else to the mesh's own directory.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from localmesh.documents import KubeObject
from localmesh.errors import ProcessError
from localmesh.supervisor.injection import PROXY_CONTAINER
from localmesh.supervisor.tcpports import TcpPorts

__all__ = [
    "COMMAND_ANNOTATION",
    "CWD_ANNOTATION",
    "CWD_BASE_ANNOTATION",
    "PRELOAD_LIBRARIES",
    "PROXY_LIBRARIES",
    "PROXY_TREES",
    "Launch",
    "PodPorts",
    "app_container",
    "app_launch",
    "declared_app_port",
    "is_gateway",
    "otlp_headers_env",
    "preload_trees",
    "service_name",
    "sidecar_launch",
]

COMMAND_ANNOTATION = "meshchaos.io/local-command"
CWD_ANNOTATION = "meshchaos.io/local-cwd"
# Where a relative local-cwd starts. Added by the mesh next to the annotation, which stays as
# the file has it, so that `kubectl apply -f` of the same file changes no pod template (and
# rolls no pod); a strategic-merge apply keeps a key its file does not name.
CWD_BASE_ANNOTATION = "meshchaos.io/local-cwd-base"
SIDECAR_MODULE = "localmesh.sidecar"


_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
# The host environment a container may see: enough to find the interpreter and its packages.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
              "COVERAGE_PROCESS_START")


@dataclass(frozen=True)
class PodPorts:
    """The loopback ports of one pod: the app's and the sidecar's three listeners + admin."""

    app: int
    inbound: int
    outbound: int
    admin: int

    def as_dict(self) -> dict[str, int]:
        return {"app": self.app, "inbound": self.inbound, "outbound": self.outbound,
                "admin": self.admin}

    def annotations(self) -> dict[str, str]:
        return {f"meshchaos.io/{k}-port": str(v) for k, v in self.as_dict().items()}


@dataclass(frozen=True)
class Launch:
    """One container's process: what to run, where, with which environment."""

    container: str
    argv: list[str]
    python: bool
    cwd: Path
    env: dict[str, str]


def is_gateway(pod: KubeObject) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get("istio") == "ingressgateway"


def app_container(pod: KubeObject) -> KubeObject | None:
    """The pod's application container (the first one that is not the sidecar)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != PROXY_CONTAINER:
            return dict(container)
    return None


def service_name(pod: KubeObject) -> str:
    """The pod's canonical service: label ``app``, else its Deployment's name."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    for key in ("app", "app.kubernetes.io/name", "service.istio.io/canonical-name"):
        if labels.get(key):
            return str(labels[key])
    name = str(meta.get("name", ""))
    # <deployment>-<rs hash>-<suffix>: drop the two generated parts.
    return name.rsplit("-", 2)[0] if name.count("-") >= 2 else name


def _container_port(container: KubeObject) -> int | None:
    for port in container.get("ports") or []:
        if port.get("containerPort"):
            return int(port["containerPort"])
    return None


def _command(pod: KubeObject) -> tuple[list[str], bool] | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(COMMAND_ANNOTATION)
    if not raw:
        return None
    try:
        argv = shlex.split(str(raw))
    except ValueError as exc:
        raise ProcessError(f"pod {pod['metadata'].get('name')}: annotation {COMMAND_ANNOTATION}"
                           f" {raw!r} is not a valid command line: {exc}") from exc
    if not argv:
        return None
    if _PYTHON.match(argv[0]):
        return [sys.executable, *argv[1:]], True
    return argv, False


def _base_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def otlp_headers_env(token: str) -> str:
    """``OTEL_EXPORTER_OTLP_HEADERS`` carrying a bearer token: the OpenTelemetry spec's
    comma-separated ``key=value`` list with URL-encoded values (the space as ``%20``)."""
    return f"authorization={quote(f'Bearer {token}', safe='')}"


def app_launch(pod: KubeObject, ports: PodPorts, *, otlp_endpoint: str, sidecar: bool,
               base_dir: Path, tcp: TcpPorts | None = None,
               data_dir: Path | None = None, otlp_token: str | None = None) -> Launch | None:
    """The app container's process, or None when the pod has no local command.

    ``otlp_token``: the mesh receiver's bearer token, handed to the app's OpenTelemetry
    exporter as ``OTEL_EXPORTER_OTLP_HEADERS`` (an SDK exporter reads it when its code
    passes no headers; the environment of a process is readable by its user only);
    ``tcp``: the sidecar's TCP listeners, announced as Kubernetes service variables;
    ``data_dir``: the pod's own directory under the state dir (``MESHCHAOS_DATA_DIR``),
    removed with the mesh, for apps that keep state (the broker).
    """
    container = app_container(pod)
    command = _command(pod)
    if container is None or command is None:
        return None
    argv, python = command
    meta = pod["metadata"]
    annotations = meta.get("annotations") or {}
    base = Path(str(annotations.get(CWD_BASE_ANNOTATION) or base_dir))
    cwd = base / str(annotations.get(CWD_ANNOTATION) or ".")  # an absolute one stands alone
    env = _base_env()
    for item in container.get("env") or []:
        if "value" in item and item.get("name"):
            env[str(item["name"])] = str(item["value"])
    env.update({
        "PORT": str(ports.app),
        "POD_NAME": meta["name"],
        "POD_NAMESPACE": meta["namespace"],
        "POD_IP": "127.0.0.1",
        "OTEL_SERVICE_NAME": service_name(pod),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
    })
    if otlp_token:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = otlp_headers_env(otlp_token)
    if data_dir is not None:
        env["MESHCHAOS_DATA_DIR"] = str(data_dir)
    if sidecar:
        proxy = f"http://127.0.0.1:{ports.outbound}"
        env.update({"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""})
        if tcp is not None:
            env.update(tcp.app_env())
    return Launch(str(container.get("name") or "app"), argv, python, cwd.resolve(), env)


def sidecar_launch(pod: KubeObject, ports: PodPorts, *, base_dir: Path, ready_fd: int = 3,
                   module: str = SIDECAR_MODULE, tcp: TcpPorts | None = None) -> Launch:
    """The ``istio-proxy`` container's process (``python -m localmesh.sidecar``)."""
    meta = pod["metadata"]
    gateway = is_gateway(pod)
    argv = [sys.executable, "-m", module,
            "--pod", meta["name"], "--namespace", meta["namespace"],
            "--service", service_name(pod), "--mode", "gateway" if gateway else "sidecar",
            "--inbound-port", str(ports.inbound), "--outbound-port", str(ports.outbound),
            "--admin-port", str(ports.admin), "--app-port", str(ports.app),
            "--ready-fd", str(ready_fd)]
    if tcp is not None:
        argv += tcp.sidecar_args()
    return Launch(PROXY_CONTAINER, argv, True, base_dir.resolve(), _base_env())


def declared_app_port(pod: KubeObject) -> int | None:
    """The first containerPort of the app container (the port the Service targets)."""
    container = app_container(pod)
    return _container_port(container) if container else None


# What the fork servers import up front: costly at start-up, safe to import. Sidecars and
# apps have a server each, so both import in parallel and sidecars need not wait for the
# apps' heavier libraries (the reference chain's OpenTelemetry SDK and exporter). The rest
# comes from the apps' own ``-m`` packages (what their ``__main__`` imports): no library
# is named here that an app may not use, since every one costs each mesh start.
PROXY_LIBRARIES = ("asyncio", "json", "httptools", "uvloop")
PROXY_TREES = (SIDECAR_MODULE, "localmesh.http")
PRELOAD_LIBRARIES = ("asyncio", "json", "uvloop",
                     "opentelemetry.sdk.trace", "opentelemetry.sdk.trace.export",
                     "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def preload_trees(pods_or_templates: list[KubeObject]) -> list[str]:
    """Packages worth importing in the apps' fork server: their ``-m`` packages."""
    trees: list[str] = []
    for obj in pods_or_templates:
        command = _command(obj)
        if command is None or not command[1]:
            continue
        args = command[0][1:]
        if args[:1] == ["-m"] and len(args) >= 2:
            trees.append(args[1])
    return trees
