"""The Kubernetes client of the chaos actions (``probes.chaos``, ``probes.routefaults``).

One place for what both need: the target's ``ApiClient`` (the explicit kubeconfig, else the
local mesh's, else the default or in-cluster config), the client's exception type and status,
a readable reason from an API ``Status``, and the run id the safety control set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import urllib3
import yaml

from localmesh.yamldoc import safe_load
from probes import config, safety
from probes.errors import ChaosError, ConfigurationError

__all__ = ["api", "api_exception", "kubeconfig_path", "reason", "run_id", "status_of"]

logger = logging.getLogger("chaostoolkit")

Configuration = Mapping[str, Any] | None


def kubeconfig_path(configuration: Configuration) -> str | None:
    """Explicit ``kubeconfig``, else the local mesh's (target local), else the default."""
    settings = config.resolve(configuration)
    if settings.kubeconfig:
        return settings.kubeconfig
    if settings.target == "local":
        local = Path(settings.state_dir) / "kubeconfig"
        if local.is_file():
            return str(local)
    return None


@contextmanager
def api(configuration: Configuration) -> Iterator[Any]:
    """An ``ApiClient`` for the target (closed afterwards); in-cluster config as a fallback."""
    from kubernetes import client  # heavy import, only when an action runs
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    config: Any = kube_config  # the kubernetes package ships without type hints here
    path = kubeconfig_path(configuration)
    try:
        api_client = config.new_client_from_config(config_file=path)
    except (ConfigException, OSError) as exc:
        if path is not None:
            raise ConfigurationError(f"cannot load kubeconfig '{path}': {exc}") from exc
        try:
            config.load_incluster_config()
        except ConfigException as inner:
            raise ConfigurationError("no kubeconfig found and not running in a cluster: "
                                     f"{exc}") from inner
        api_client = client.ApiClient()
    try:
        yield api_client
    except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out: no API answer
        raise ChaosError(f"cannot reach the Kubernetes API "
                         f"'{api_client.configuration.host}': {exc}") from exc
    finally:
        api_client.close()


def status_of(exc: Exception) -> int:
    return int(getattr(exc, "status", 0) or 0)


def api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    exc_type: type[Exception] = ApiException
    return exc_type


def run_id(configuration: Configuration) -> str:
    found = str((configuration or {}).get("run_id") or "")
    if not found:
        # Without the safety control there is no run: still keep names unique and labelled.
        found = safety.new_run_id()
        logger.warning("no run_id in the configuration (is the probes.controls.safety "
                       "control enabled?); using '%s' for this object only", found)
    return found


def reason(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    try:
        return str(safe_load(body).get("message")) if body else str(exc)
    except (yaml.YAMLError, AttributeError):
        return str(exc)
