"""The kubeconfig of a local mesh: plain HTTP on loopback, no credentials.

Written so that the official ``kubernetes`` client (``config.load_kube_config``)
and chaostoolkit-kubernetes (``create_k8s_api_client`` via ``KUBECONFIG``) load
it unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

__all__ = ["CONTEXT", "kubeconfig_document", "write_kubeconfig"]

CONTEXT = "meshchaos-local"


def kubeconfig_document(port: int, *, namespace: str = "default",
                        host: str = "127.0.0.1") -> dict[str, object]:
    """The kubeconfig for an API server at ``http://<host>:<port>``."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": f"http://{host}:{port}"}}],
        "users": [{"name": CONTEXT, "user": {}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT,
                                                   "namespace": namespace}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(path: Path, port: int, *, namespace: str = "default") -> Path:
    """Write the kubeconfig atomically (readers never see half a file) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = yaml.safe_dump(kubeconfig_document(port, namespace=namespace), sort_keys=False)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)
    return path
