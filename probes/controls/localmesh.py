"""Control: run the experiment against the embedded local mesh when ``target`` is ``local``.

Usage (first in the experiment's ``controls``)::

    {"name": "local-mesh", "provider": {"type": "python", "module": "probes.controls.localmesh"}}

On target ``kubernetes`` it only exports the configured ``kubeconfig`` as ``KUBECONFIG``
(restored at cleanup) so chaostoolkit-kubernetes activities reach the same cluster as the
probes. When ``configuration.target`` is ``local`` (the default), it reuses the live mesh
of ``meshchaos_state_dir`` (default ``.meshchaos``, e.g. one started with ``meshchaos up``)
or starts one (:class:`localmesh.daemon.MeshDaemon`: ``meshchaos up`` in a process of
its own, which dies with this one) with the manifests of ``meshchaos_manifests`` (default
``fixtures/k8s``) and, when ``chain_defect`` is set, the twin
``CHAIN_DEFECT=<chain_defect>`` at deployment ``chain_defect_hop``.

The start is launched as early as chaoslib allows, in ``configure_control`` (controls are
configured in declaration order: this one first), and waited for in
``before_experiment_control``: meanwhile the safety control imports the Kubernetes
client it needs in this process while the mesh starts in its own, on the other core; the
client's core API (the slowest import, for the evidence readers) is loaded in the
background once the mesh is up.
A separate process also keeps the mesh's API server, trace store and controllers off this
process's GIL, which the probes use. ``before_experiment_control`` starts the mesh itself
when ``configure_control`` did not (or could not). It then writes ``kubeconfig``,
``ingress_url``, ``traces_url``, ``traces_api`` and ``meshchaos_state_dir`` into the
configuration *in place*: chaoslib 1.44 hands the control the very dict it later copies
for each activity (``provider/python.py``: ``arguments["configuration"] =
configuration.copy()`` at call time), so the activities see the mesh. ``KUBECONFIG`` is
exported for the duration of the run so chaostoolkit-kubernetes activities reach the same
API.

A mesh this control started is stopped in ``cleanup_control``, which chaoslib calls after
every control's after-hook (the safety control still removes the run's chaos through the
mesh's API there) and even when the run blew up. A reused mesh is left running. A mesh
that cannot start interrupts the run (status ``interrupted``) rather than letting probes
measure nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chaoslib.exceptions import InterruptExecution

from localmesh.daemon import MeshDaemon
from localmesh.errors import MeshError
from probes import config
from probes.controls import skip_collection_at_exit
from probes.errors import ProbeError

__all__ = [
    "before_experiment_control",
    "cleanup_control",
    "configure_control",
    "mesh_env_overrides",
]

logger = logging.getLogger("chaostoolkit")

START_TIMEOUT_S = 60.0


class _Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class _Owned:
    thread: _Stoppable | None
    previous_kubeconfig: str | None
    previous_client_default: str | None = None


_lock = threading.Lock()
_owned: _Owned | None = None
# A mesh launched by configure_control, not yet claimed by before_experiment_control.
_launched: tuple[Path, MeshDaemon] | None = None


def configure_control(configuration: MutableMapping[str, Any] | None = None,
                      **_: Any) -> None:
    """Launch the local mesh now (without waiting) when the run will need a fresh one.

    Anything unusual (a live mesh, a twin on it, missing manifests, a failed launch)
    is left to ``before_experiment_control``, which reports it: chaoslib swallows errors
    raised here.
    """
    global _launched
    skip_collection_at_exit()
    if configuration is None or str(configuration.get("target") or "local") != "local":
        return
    try:
        state_dir = _state_dir(configuration)
        overrides = mesh_env_overrides(configuration)
        manifests = _manifests(configuration)
        if _live_endpoints(state_dir) is not None:
            return
        daemon = _daemon(manifests, state_dir, overrides)
        logger.info("starting the local mesh from %s in %s",
                    [str(p) for p in manifests], state_dir)
        daemon.launch()
    except (InterruptExecution, MeshError, OSError):
        logger.debug("the local mesh was not launched early", exc_info=True)
        return
    _stop_launched()  # one left by a former run that never reached its experiment
    _launched = (state_dir.resolve(), daemon)
    atexit.register(daemon.stop)


def before_experiment_control(context: dict[str, Any],
                              configuration: MutableMapping[str, Any] | None = None,
                              **_: Any) -> None:
    """Reuse or start the local mesh and publish its endpoints into the configuration."""
    skip_collection_at_exit()
    if configuration is None:
        return
    if str(configuration.get("target") or "local") != "local":
        _export_cluster_kubeconfig(configuration)
        return
    state_dir = _state_dir(configuration)
    overrides = mesh_env_overrides(configuration)
    launched = _take_launched(state_dir)
    endpoints = None if launched is not None else _live_endpoints(state_dir)
    thread: _Stoppable | None = None
    if endpoints is not None and overrides:
        raise InterruptExecution(
            f"a live mesh runs from state dir '{state_dir}' but the configuration asks for "
            f"deployment env {sorted(f'{ns}/{d}' for ns, d in overrides)} (chain_defect / "
            "mesh_set_env) it cannot apply to running pods; stop it with `meshchaos down` or "
            "set meshchaos_state_dir to another directory")
    if endpoints is None:
        thread, endpoints = _start_mesh(configuration, state_dir, overrides, launched)
    _remember(thread)
    _publish(configuration, endpoints, state_dir)


def cleanup_control() -> None:
    """Stop the mesh this control started (a reused mesh keeps running).

    Stopping waits for cleanup, not for the after-experiment hook: chaoslib calls the
    controls' after-hooks in declaration order, and the safety control's after-hook still
    needs the mesh's API to remove this run's chaos objects.
    """
    _stop_launched()
    _release()


def mesh_env_overrides(configuration: MutableMapping[str, Any]
                       ) -> dict[tuple[str, str], dict[str, str]]:
    """The ``LocalMesh`` env overrides: ``mesh_set_env`` entries, and the reference chain's
    twin asked for by ``chain_defect``/``chain_defect_hop``."""
    settings = _settings(configuration)
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    for namespace, deployment, key, value in settings.mesh_set_env:
        overrides.setdefault((namespace, deployment), {})[key] = value
    defect = settings.chain_defect
    if not defect or defect == "none":
        return overrides
    hop = settings.chain_defect_hop
    if not hop:
        raise InterruptExecution(
            f"chain_defect='{defect}' needs chain_defect_hop (the deployment that runs the "
            "twin, e.g. 'orders')")
    env = {"CHAIN_DEFECT": defect, **_hop_env(settings.chain_defect_env)}
    overrides.setdefault((settings.namespace, hop), {}).update(env)
    return overrides


def _hop_env(text: str) -> dict[str, str]:
    """``chain_defect_env`` = ``KEY=VALUE;KEY=VALUE``: extra env of the twin's hop, e.g. a
    longer ``CHAIN_WORK_BEFORE`` so that a bug of a few ms stands out of clock noise."""
    env: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InterruptExecution(f"chain_defect_env entry '{item}' is not KEY=VALUE "
                                     f"(in chain_defect_env='{text}')")
        env[key.strip()] = value.strip()
    return env


def _export_cluster_kubeconfig(configuration: MutableMapping[str, Any]) -> None:
    """On a cluster, give chaostoolkit-kubernetes the ``kubeconfig`` the probes use too."""
    kubeconfig = str(configuration.get("kubeconfig") or "")
    if not kubeconfig:
        return
    path = Path(kubeconfig).expanduser()
    if not path.is_file():
        raise InterruptExecution(f"kubeconfig '{kubeconfig}' (configuration 'kubeconfig') "
                                 "does not exist")
    _remember(None)
    os.environ["KUBECONFIG"] = str(path)
    _point_kube_client_at(str(path))


def _live_endpoints(state_dir: Path) -> Any | None:
    from localmesh.errors import StateDirError
    from localmesh.statedir import StateDir, read_endpoints

    if StateDir(state_dir).live_pid() is None:
        return None
    try:
        return read_endpoints(state_dir)
    except StateDirError:
        logger.info("state dir %s holds no live mesh; starting one", state_dir)
        return None


def _settings(configuration: MutableMapping[str, Any]) -> config.Settings:
    try:
        return config.resolve(configuration)
    except ProbeError as exc:
        raise InterruptExecution(str(exc)) from exc


def _state_dir(configuration: MutableMapping[str, Any]) -> Path:
    return Path(_settings(configuration).state_dir)


def _manifests(configuration: MutableMapping[str, Any]) -> list[Path]:
    manifests = [Path(p) for p in _settings(configuration).manifests]
    missing = [str(p) for p in manifests if not p.exists()]
    if missing:
        raise InterruptExecution(f"meshchaos_manifests names missing path(s) {missing} "
                                 f"(relative to '{Path.cwd()}'; run from the repository root)")
    return manifests


def _daemon(manifests: list[Path], state_dir: Path,
            overrides: dict[tuple[str, str], dict[str, str]]) -> MeshDaemon:
    set_env = [f"{ns}/{deployment}:{key}={value}"
               for (ns, deployment), env in overrides.items() for key, value in env.items()]
    return MeshDaemon(manifests, state_dir, set_env=set_env, ready_timeout=START_TIMEOUT_S,
                      owned=True)


def _take_launched(state_dir: Path) -> MeshDaemon | None:
    """The daemon configure_control launched for this state dir (another one is stopped)."""
    global _launched
    launched, _launched = _launched, None
    if launched is None:
        return None
    path, daemon = launched
    if path == state_dir.resolve():
        return daemon
    daemon.stop()
    atexit.unregister(daemon.stop)
    return None


def _stop_launched() -> None:
    """Stop a mesh configure_control launched for a run that never got to use it."""
    global _launched
    launched, _launched = _launched, None
    if launched is not None:
        launched[1].stop()
        atexit.unregister(launched[1].stop)


def _start_mesh(configuration: MutableMapping[str, Any], state_dir: Path,
                overrides: dict[tuple[str, str], dict[str, str]],
                daemon: MeshDaemon | None = None) -> tuple[_Stoppable, Any]:
    from localmesh.statedir import read_endpoints

    if daemon is None:
        manifests = _manifests(configuration)
        daemon = _daemon(manifests, state_dir, overrides)
        logger.info("starting the local mesh from %s in %s",
                    [str(p) for p in manifests], state_dir)
        daemon.launch()
        atexit.register(daemon.stop)
    try:
        daemon.wait_ready(lambda line: logger.info("local mesh: %s", line))
        endpoints = read_endpoints(state_dir)
    except (MeshError, OSError) as exc:
        daemon.stop()
        raise InterruptExecution(f"the local mesh did not start from "
                                 f"{[str(p) for p in daemon.manifests]}: {exc}") from exc
    return _OwnedDaemon(daemon), endpoints


class _OwnedDaemon:
    """Stops the daemon and forgets its exit hook."""

    def __init__(self, daemon: MeshDaemon) -> None:
        self.daemon = daemon

    def stop(self) -> None:
        self.daemon.stop()
        atexit.unregister(self.daemon.stop)


def _remember(thread: _Stoppable | None) -> None:
    global _owned
    with _lock:
        previous = _owned
        _owned = _Owned(thread=thread, previous_kubeconfig=os.environ.get("KUBECONFIG"))
    if previous is not None and previous.thread is not None:
        previous.thread.stop()  # a former run that never cleaned up must not leak a mesh


def _publish(configuration: MutableMapping[str, Any], endpoints: Any, state_dir: Path) -> None:
    kubeconfig = state_dir.resolve() / "kubeconfig"
    configuration["kubeconfig"] = str(kubeconfig)
    configuration["ingress_url"] = _url(endpoints.ingress)
    configuration["traces_url"] = _url(endpoints.traces)
    configuration["traces_api"] = "jaeger"
    configuration["meshchaos_state_dir"] = str(state_dir.resolve())
    os.environ["KUBECONFIG"] = str(kubeconfig)
    _point_kube_client_at(str(kubeconfig))
    logger.info("local mesh: ingress %s, traces %s, kubeconfig %s",
                configuration["ingress_url"], configuration["traces_url"], kubeconfig)


def _release() -> None:
    global _owned
    with _lock:
        owned, _owned = _owned, None
    if owned is None:
        return
    if owned.previous_kubeconfig is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = owned.previous_kubeconfig
    if owned.previous_client_default is not None:
        _set_client_default(owned.previous_client_default)
    if owned.thread is not None:
        logger.info("stopping the local mesh this run started")
        owned.thread.stop()


def _point_kube_client_at(kubeconfig: str) -> None:
    """Make ``load_kube_config()`` without a path read the mesh's kubeconfig.

    The kubernetes client reads ``KUBECONFIG`` once, at import, into
    ``KUBE_CONFIG_DEFAULT_LOCATION``; chaostoolkit-kubernetes activities call
    ``load_kube_config()`` without a path, and chaoslib has imported them while validating
    the experiment, before this control ran. So the default is refreshed (and restored).
    """
    previous = _set_client_default(kubeconfig)
    with _lock:
        if _owned is not None and _owned.previous_client_default is None:
            _owned.previous_client_default = previous


def _set_client_default(path: str) -> str | None:
    module: Any = sys.modules.get("kubernetes.config.kube_config")  # ships no type hints
    if module is None:
        return None  # not imported yet: it will read KUBECONFIG when it is
    previous = str(module.KUBE_CONFIG_DEFAULT_LOCATION)
    module.KUBE_CONFIG_DEFAULT_LOCATION = path
    return previous


def _url(value: Any) -> str:
    text = str(value)
    return text if "://" in text else f"http://127.0.0.1:{text}"
