"""Only the mesh's owner gets into its API, as only a cluster's credential holders do.

Kubernetes "Authenticating": with anonymous requests disabled, a request whose bearer
token no authenticator accepts is answered "401 Unauthorized" (a ``Status`` with reason
Unauthorized). The local mesh's token is random per mesh and lives only in its
kubeconfig, written 0600, next to the CA of the API's certificate: kubectl sends a
kubeconfig's credentials over TLS only (kubernetes/kubectl#744), so the API speaks HTTPS
(``localmesh.tls``). Clients that read the kubeconfig (the kubernetes client,
chaostoolkit-kubernetes, kubectl) send the token and trust the CA without being told.
"""

from __future__ import annotations

import base64
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client, config

from localmesh.apiserver import create_api_app
from localmesh.kubeconfig import (
    auth_headers,
    new_token,
    read_token,
    ssl_context,
    write_kubeconfig,
)
from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from localmesh.tls import make_certificates
from tests.apiserver_helpers import namespace, serve_app


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An API over TLS that requires a token, and a kubeconfig that has both."""
    store = ObjectStore()
    store.create(namespace("shop"))
    token = new_token()
    certificates = make_certificates(tmp_path)
    app = create_api_app(store, PodLogs(tmp_path / "state"), token=token)
    with serve_app(app, tls=certificates.server_context) as port:
        yield (f"https://127.0.0.1:{port}",
               write_kubeconfig(tmp_path / "kubeconfig", port, token=token,
                                ca_pem=certificates.ca_pem))


def trusted(kubeconfig: Path) -> str:
    """A CA bundle file for requests, from the kubeconfig's certificate-authority-data."""
    doc = yaml.safe_load(kubeconfig.read_text())
    bundle = kubeconfig.with_name("ca.pem")
    bundle.write_bytes(base64.b64decode(doc["clusters"][0]["cluster"][
        "certificate-authority-data"]))
    return str(bundle)


def test_a_request_without_the_token_is_401_unauthorized(guarded: tuple[str, Path]) -> None:
    url, kubeconfig = guarded
    for path in ("/api/v1/pods", "/version", "/apis", "/openapi/v3"):
        response = requests.get(f"{url}{path}", verify=trusted(kubeconfig), timeout=5)
        body = response.json()
        assert response.status_code == 401, path
        assert (body["kind"], body["status"], body["reason"], body["code"]) == (
            "Status", "Failure", "Unauthorized", 401)


def test_a_wrong_token_is_refused_too(guarded: tuple[str, Path]) -> None:
    url, kubeconfig = guarded
    for header in (f"Bearer {new_token()}", "Basic YWRtaW46YWRtaW4=", "Bearer "):
        response = requests.get(f"{url}/api/v1/namespaces", timeout=5,
                                verify=trusted(kubeconfig), headers={"Authorization": header})
        assert response.status_code == 401, header


def test_a_header_that_is_not_utf8_is_401_not_a_server_error(guarded: tuple[str, Path]) -> None:
    """RFC 9110 §5.5: a field value may hold obs-text (bytes over 0x7F); such a token is
    simply not the mesh's."""
    url, kubeconfig = guarded
    context = ssl.create_default_context(cafile=trusted(kubeconfig))
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as conn:
        conn.sendall(b"GET /api/v1/pods HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
                     b"Authorization: Bearer \xff\xfe\r\n\r\n")
        head = conn.recv(4096).split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 401 Unauthorized"


def test_the_kubeconfigs_token_and_ca_let_its_clients_in(guarded: tuple[str, Path]) -> None:
    """A raw client with auth_headers and the CA, and the kubernetes client from the
    kubeconfig alone."""
    url, kubeconfig = guarded
    raw = requests.get(f"{url}/api/v1/namespaces", headers=auth_headers(kubeconfig),
                       verify=trusted(kubeconfig), timeout=5)
    assert raw.status_code == 200
    api_client = config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
    names = [ns.metadata.name if ns.metadata else None
             for ns in client.CoreV1Api(api_client).list_namespace().items]
    assert names == ["shop"]


def test_the_api_certificate_is_trusted_only_through_the_mesh_ca(
        guarded: tuple[str, Path], tmp_path: Path) -> None:
    """The system's CAs do not vouch for it, and another mesh's CA does not either."""
    url, kubeconfig = guarded
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/version", timeout=5)
    other = make_certificates(tmp_path / "other")
    bundle = tmp_path / "other-ca.pem"
    bundle.write_bytes(other.ca_pem)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/version", verify=str(bundle), timeout=5)
    context = ssl_context(kubeconfig)
    assert isinstance(context, ssl.SSLContext) and context.check_hostname


def test_the_kubeconfig_is_the_owners_alone_and_tokens_differ(tmp_path: Path) -> None:
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 40  # 256 random bits
    path = write_kubeconfig(tmp_path / "kubeconfig", 1234, token=first, ca_pem=b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path) == first
    assert "server: https://127.0.0.1:1234" in path.read_text()
    plain = write_kubeconfig(tmp_path / "open", 1234)  # what tests that embed the app use
    assert read_token(plain) is None and ssl_context(plain) is None
    make_certificates(tmp_path / "certs")
    assert list((tmp_path / "certs").iterdir()) == []  # the server's key is not left behind
