"""The kubeconfig of a local mesh loads unchanged in the kubernetes client and chaosk8s.

docs/architecture.md, "State dir": ``kubeconfig`` (cluster ``meshchaos-local``, server
``http://127.0.0.1:<api>``, no auth).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from chaosk8s import create_k8s_api_client
from kubernetes import client, config
from kubernetes.config import kube_config

from localmesh.kubeconfig import write_kubeconfig
from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from tests.apiserver_helpers import ServedApi, namespace, serve_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    store = ObjectStore()
    store.create(namespace("shop"))
    with serve_api(store, PodLogs(tmp_path / "state"), tmp_path) as served:
        yield served


def test_kubeconfig_names_cluster_context_user_and_default_namespace(tmp_path: Path) -> None:
    """One cluster/context/user meshchaos-local, plain HTTP on loopback, namespace default
    unless the mesh names its app namespace."""
    path = write_kubeconfig(tmp_path / "state" / "kubeconfig", 43210)
    doc = yaml.safe_load(path.read_text())
    assert doc["current-context"] == "meshchaos-local"
    assert doc["clusters"] == [{"name": "meshchaos-local",
                                "cluster": {"server": "http://127.0.0.1:43210"}}]
    assert doc["contexts"][0]["context"] == {"cluster": "meshchaos-local",
                                             "user": "meshchaos-local", "namespace": "default"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = write_kubeconfig(tmp_path / "k2", 1, namespace="payments")
    assert yaml.safe_load(other.read_text())["contexts"][0]["context"]["namespace"] == "payments"


def test_kubernetes_client_loads_it_and_reaches_the_api(api: ServedApi) -> None:
    """config.load_kube_config(config_file=…) gives a client that lists namespaces."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(api.kubeconfig),
                            client_configuration=configuration)
    assert configuration.host == api.url
    names = [n.metadata.name for n in client.CoreV1Api(
        client.ApiClient(configuration)).list_namespace().items]
    assert names == ["shop"]


def test_chaosk8s_client_factory_reads_it_from_kubeconfig_env(
        api: ServedApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """chaosk8s.create_k8s_api_client uses KUBECONFIG (read by kubernetes at import time)."""
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(api.kubeconfig))
    api_client = create_k8s_api_client()
    assert api_client.configuration.host == api.url
    assert client.VersionApi(api_client).get_code().git_version.startswith("v1.")
