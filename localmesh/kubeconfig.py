"""The kubeconfig of a local mesh: HTTPS on loopback, the mesh's CA and bearer token.

Written so that the official ``kubernetes`` client (``config.load_kube_config``),
chaostoolkit-kubernetes (``create_k8s_api_client`` via ``KUBECONFIG``) and ``kubectl``
load it unchanged. The token is random per mesh and the file is the owner's alone (0600),
so only the user who started the mesh can use its API, as only a cluster's credential
holders can use theirs (kubectl sends credentials over TLS only, hence the CA:
``localmesh.tls``). ``auth_headers`` and ``ssl_context`` give both to clients that speak
HTTP themselves. Without a CA and a token (tests embedding the API app) it is plain HTTP.
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONTEXT", "auth_headers", "kubeconfig_document", "new_token", "read_token",
           "ssl_context", "write_kubeconfig"]

CONTEXT = "meshchaos-local"


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def kubeconfig_document(port: int, *, namespace: str = "default", host: str = "127.0.0.1",
                        token: str | None = None,
                        ca_pem: bytes | None = None) -> dict[str, object]:
    """The kubeconfig for an API server at ``http(s)://<host>:<port>`` (with its token)."""
    cluster: dict[str, str] = {"server": f"{'https' if ca_pem else 'http'}://{host}:{port}"}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": {"token": token} if token else {}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT,
                                                   "namespace": namespace}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(path: Path, port: int, *, namespace: str = "default",
                     token: str | None = None, ca_pem: bytes | None = None) -> Path:
    """Write the kubeconfig atomically (readers never see half a file) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = yaml.safe_dump(kubeconfig_document(port, namespace=namespace, token=token,
                                              ca_pem=ca_pem), sort_keys=False)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)
    return path


def _current(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The current context's cluster and user entries."""
    doc: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or []}
    context = contexts.get(doc.get("current-context"), {})

    def entry(kind: str, key: str) -> dict[str, Any]:
        for item in doc.get(kind) or []:
            if item.get("name") == context.get(key):
                return dict(item.get(key) or {})
        return {}
    return entry("clusters", "cluster"), entry("users", "user")


def read_token(path: Path) -> str | None:
    """The bearer token of the current context's user in a kubeconfig (None: it has none)."""
    token = _current(path)[1].get("token")
    return str(token) if token else None


def auth_headers(path: Path) -> dict[str, str]:
    """``Authorization: Bearer …`` for a raw HTTP client of the mesh in that kubeconfig."""
    token = read_token(path)
    return {"Authorization": f"Bearer {token}"} if token else {}


def ssl_context(path: Path) -> ssl.SSLContext | None:
    """A client TLS context trusting the kubeconfig's CA (None: the server is plain HTTP)."""
    data = _current(path)[0].get("certificate-authority-data")
    if not data:
        return None
    return ssl.create_default_context(cadata=base64.b64decode(data).decode("ascii"))
