"""Control: give the run an id, refuse unsafe namespaces, and always take the run's chaos away.

Usage (in the experiment's ``controls``)::

    {"name": "safety", "provider": {"type": "python", "module": "probes.controls.safety"}}

- ``configure_control`` creates the run id (kept if ``run_id`` is already set) and
  writes it into the configuration *in place* as ``run_id``: chaoslib 1.44 copies that
  dict for each activity at call time, so ``probes.chaos`` names and labels its objects
  with it. It also installs SIGINT/SIGTERM handlers that remove the run's chaos objects
  before handing the signal to the previous handler (chaoslib's, or Ctrl-C), and starts
  importing the Kubernetes client those removals use, in a background thread. A signal
  that lands once the experiment is over only removes the chaos: the journal and the
  report are written first.
- ``before_experiment_control`` checks, before anything is applied, every
  ``probes.chaos.apply_chaos`` and ``probes.routefaults.apply_route_fault`` activity of the
  experiment (with its overrides) and the
  configured ``namespace`` against the allowlist (``allowed_namespaces``, default
  the ``namespace`` key; ``kube-system``, ``istio-system`` and ``chaos-mesh`` never) and
  interrupts the run if any is refused. chaoslib swallows errors raised while a
  control is configured, so the refusal is raised here, where it stops the run.
- ``before_activity_control`` checks each chaos action again, with its final arguments.
- ``after_experiment_control`` removes every chaos object labelled with the run id,
  whatever the outcome, and records what it removed in the journal
  (``meshchaos_safety``); ``cleanup_control`` does it again if that did not succeed and
  restores the signal handlers. Under ``chaos run``, whose CLI writes the journal after the
  controls are cleaned up, it then ignores Ctrl-C for a few seconds: a second press landing
  in that write would leave an empty journal.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from chaoslib.exceptions import InterruptExecution

from localmesh.statedir import StateDir
from probes import chaos, config, preflight, safety
from probes.errors import ConfigurationError, ProbeError
from probes.evidence.gcpause import gc_paused

__all__ = [
    "after_experiment_control",
    "before_activity_control",
    "before_experiment_control",
    "cleanup_control",
    "configure_control",
]

logger = logging.getLogger("chaostoolkit")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PRELOAD_WAIT_S = 10.0  # bounded: a cleanup must never hang on an import
_JOURNAL_GRACE_S = 5.0  # chaos run writes its journal moments after the controls' cleanup
_CHAOS_MODULE, _APPLY = "probes.chaos", "apply_chaos"
_ROUTE_FAULT_MODULE = "probes.routefaults"
_APPLIES = frozenset({(_CHAOS_MODULE, _APPLY), (_ROUTE_FAULT_MODULE, "apply_route_fault")})


@dataclass
class _Run:
    run_id: str
    configuration: MutableMapping[str, Any]
    refusal: str = ""
    cleaned: bool = False
    ending: bool = False  # the experiment is over: only the journal, report and cleanup remain
    removed: list[dict[str, str]] = field(default_factory=list)
    previous: dict[int, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    preload: threading.Thread | None = None


_run: _Run | None = None


def configure_control(configuration: MutableMapping[str, Any] | None = None,
                      experiment: Mapping[str, Any] | None = None, **_: Any) -> None:
    """Create the run id, remember the refusals, install the signal handlers."""
    global _run
    if configuration is None:
        raise ConfigurationError("the safety control needs the experiment "
                                 "configuration")
    run_id = str(configuration.get("run_id") or safety.new_run_id())
    configuration["run_id"] = run_id
    _run = _Run(run_id, configuration)
    _run.refusal = _refusal(experiment or {}, configuration)
    _run.preload = _preload_kubernetes_in_background()
    _install_signal_handlers(_run)
    logger.info("meshchaos run id '%s'%s", run_id,
                " (dry run: chaos manifests are printed, nothing is applied)"
                if safety.is_dry_run(configuration) else "")


def before_experiment_control(context: Any = None,
                              configuration: Mapping[str, Any] | None = None,
                              **_: Any) -> None:
    """Stop the run before anything is applied if a chaos action is refused, or a target
    the experiment names is not on the mesh (:mod:`probes.preflight`)."""
    if _run is None:
        raise InterruptExecution("the safety control was not configured (no run id): "
                                 "refusing to run chaos without it")
    if _run.refusal:
        raise InterruptExecution(_run.refusal)
    # Only experiments that take their targets from configuration have targets to check.
    if isinstance(context, Mapping) and configuration is not None and \
            "entry_path" in (context.get("configuration") or {}) and \
            not safety.is_dry_run(configuration):
        try:
            preflight.check_experiment(context, configuration)
        except ProbeError as exc:
            raise InterruptExecution(f"refusing to start: {exc}") from exc


def before_activity_control(context: Mapping[str, Any] | None = None,
                            configuration: Mapping[str, Any] | None = None,
                            **_: Any) -> None:
    """Check one chaos action with its final arguments against the allowlist."""
    if context is None or not _is_apply(context):
        return
    message = _check_activity(context, configuration or {})
    if message:
        raise InterruptExecution(message)


def after_experiment_control(context: Any = None, state: Any = None, **_: Any) -> None:
    """Remove the run's chaos objects, whatever the outcome; note them in the journal."""
    if _run is not None:
        _run.ending = True
    # List again even after a signal's cleanup: a create still in flight then may have
    # landed after that listing.
    _cleanup("after the experiment", relist=True)
    if _run is not None and isinstance(state, MutableMapping):
        state["meshchaos_safety"] = {"run_id": _run.run_id, "removed": list(_run.removed),
                                     "cleaned": _run.cleaned}


def cleanup_control() -> None:
    """Last chance: remove what is left, then restore the previous signal handlers."""
    global _run
    run = _run
    if run is None:
        return
    try:
        _cleanup("at control cleanup", relist=True)
    finally:
        _restore_signal_handlers(run)
        if run.ending and _under_chaos_cli():
            _guard_journal_write()
        _run = None


# -- internals --------------------------------------------------------------------------

def _is_apply(activity: Mapping[str, Any]) -> bool:
    provider = activity.get("provider") or {}
    return (activity.get("type") == "action" and provider.get("type") == "python"
            and (provider.get("module"), provider.get("func")) in _APPLIES)


def _activities(experiment: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    hypothesis = experiment.get("steady-state-hypothesis") or {}
    for group in (hypothesis.get("probes") or [], experiment.get("method") or [],
                  experiment.get("rollbacks") or []):
        yield from (a for a in group if isinstance(a, Mapping))


def _check_activity(activity: Mapping[str, Any], configuration: Mapping[str, Any]) -> str:
    """The refusal message for one apply_chaos or apply_route_fault activity, or '' when it
    is allowed."""
    provider = activity.get("provider") or {}
    args = dict(provider.get("arguments") or {})
    if provider.get("module") == _ROUTE_FAULT_MODULE:
        # A route fault edits one VirtualService, in its namespace and nowhere else.
        namespace = str(args.get("namespace") or "") or config.resolve(configuration).namespace
        try:
            safety.check_namespaces([namespace], configuration,
                                    f"action '{activity.get('name')}'")
        except ProbeError as exc:
            return str(exc)
        return ""
    try:
        # the same object apply_chaos would build (a sibling module's private helper)
        obj = chaos._build(str(args.get("manifest", "")), "check",
                           duration=args.get("duration") or None,
                           selector=args.get("selector"),
                           namespace=str(args.get("namespace") or "")
                           or config.resolve(configuration).namespace)
        safety.check_namespaces(safety.namespaces_of(obj), configuration,
                                f"action '{activity.get('name')}'")
    except ProbeError as exc:
        return str(exc)
    return ""


def _refusal(experiment: Mapping[str, Any], configuration: Mapping[str, Any]) -> str:
    try:
        namespace = configuration.get("namespace")
        if namespace:
            safety.check_namespaces([str(namespace)], configuration,
                                    "configuration 'namespace'")
    except ProbeError as exc:
        return str(exc)
    for activity in _activities(experiment):
        if _is_apply(activity):
            message = _check_activity(activity, configuration)
            if message:
                return message
    return ""


def _cleanup(when: str, *, relist: bool = False) -> None:
    run = _run
    if run is None or (run.cleaned and not relist):
        return
    if _local_mesh_gone(run.configuration):
        # The local mesh stopped (e.g. the local-mesh control ran first): its store, and
        # every chaos object in it, went with it. Nothing is left to remove.
        logger.info("the local mesh of run '%s' is gone, and its chaos objects with it",
                    run.run_id)
        run.cleaned = True
        return
    if not run.lock.acquire(blocking=False):
        return  # a cleanup is already running (a signal arrived during it)
    try:
        _wait_preloaded(run)
        result = chaos.remove_run_chaos(configuration=dict(run.configuration))
    except ProbeError:
        logger.exception("could not remove the chaos objects of run '%s' %s; run "
                         "`meshchaos abort --run-id %s`", run.run_id, when, run.run_id)
        return
    finally:
        run.lock.release()
    run.removed += result.get("removed", [])
    run.cleaned = True
    names = [f"{r['kind']} {r['namespace']}/{r['name']}" for r in result.get("removed", [])]
    logger.info("removed the chaos objects of run '%s' %s: %s", run.run_id, when,
                ", ".join(names) or "none left")


def _local_mesh_gone(configuration: Mapping[str, Any]) -> bool:
    """True on target local once no mesh lives in the state dir and its kubeconfig is gone."""
    if str(configuration.get("target", "local")) != "local":
        return False
    state = StateDir(Path(config.resolve(configuration).state_dir))
    kubeconfig = Path(str(configuration.get("kubeconfig") or state.kubeconfig))
    return state.live_pid() is None and not kubeconfig.is_file()


def _preload_kubernetes_in_background() -> threading.Thread:
    """Import what the cleanup uses (the Kubernetes client: ~0.25 s of CPU) in a thread.

    Meanwhile the main thread waits for the local mesh (started in a process of its own)
    and may run the first probe: the import is off the run's critical path. Whoever needs
    the client before it is loaded (the first chaos action, the signal handler's cleanup)
    waits on Python's per-module import locks, or joins this thread (:func:`_wait_preloaded`),
    and never sees a half-initialised module: that only happens when a signal handler
    re-enters an import of its own thread, and the import is never the main thread's now.
    """
    thread = threading.Thread(target=_preload_kubernetes, name="meshchaos-safety-preload",
                              daemon=True)
    thread.start()
    return thread


def _preload_kubernetes() -> None:
    # An import only adds objects that live as long as the process: the collector's
    # passes over them while it runs (~50 ms of CPU here, during the mesh's start) find
    # nothing to free.
    with gc_paused():
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException

        # kubernetes >= 30 resolves its API classes lazily, on first attribute access. The
        # suite uses CustomObjectsApi only (core/v1 reads go through probes.coreapi:
        # CoreV1Api would cost 1 s more of CPU).
        loaded = (client.ApiClient, client.CustomObjectsApi, config.new_client_from_config,
                  ApiException, ConfigException)
    logger.debug("kubernetes client ready for cleanup (%d names)", len(loaded))


def _wait_preloaded(run: _Run) -> None:
    thread = run.preload
    if thread is not None and thread is not threading.current_thread():
        thread.join(_PRELOAD_WAIT_S)


def _install_signal_handlers(run: _Run) -> None:
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not in the main thread: no signal handlers for run '%s'", run.run_id)
        return
    for signum in _SIGNALS:
        run.previous[signum] = signal.signal(signum, _on_signal)


def _restore_signal_handlers(run: _Run) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in run.previous.items():
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)


def _under_chaos_cli() -> bool:
    """Whether this process is the ``chaos`` command (which writes the journal after us)."""
    return Path(sys.argv[0]).name == "chaos" or sys.argv[0].endswith("chaostoolkit/__main__.py")


def _guard_journal_write(grace_s: float = _JOURNAL_GRACE_S) -> None:
    """Ignore Ctrl-C for ``grace_s``: ``chaos run`` writes its journal right after the
    controls' cleanup, and a KeyboardInterrupt inside that write leaves it empty. Later
    presses do what the handler before did (main thread only, as signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGINT)
    until = time.monotonic() + grace_s

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if time.monotonic() < until:
            logger.warning("Ctrl-C ignored: the run's chaos is removed and its journal is "
                           "being written")
            return
        signal.signal(signal.SIGINT, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Remove the run's chaos, then let the previous handler do what it did before."""
    run = _run
    logger.warning("signal %s received: removing the chaos objects of the run first",
                   signal.Signals(signum).name)
    try:
        _cleanup(f"on {signal.Signals(signum).name}")
    except Exception:  # the interrupt must go on whatever the cleanup hit
        logger.exception("removing the chaos objects of the run on %s failed; run "
                         "`meshchaos abort` to remove them", signal.Signals(signum).name)
    finally:
        if run is not None and run.ending:
            # Past the experiment an interrupt would only cut short what must finish (the
            # journal, the report, stopping the mesh), all of it moments away.
            logger.warning("the run is ending: its journal and report are written first")
        else:
            _hand_on(run, signum, frame)


def _hand_on(run: _Run | None, signum: int, frame: FrameType | None) -> None:
    """Do what the previous handler did: Ctrl-C must always interrupt the run."""
    previous = run.previous.get(signum) if run is not None else None
    if callable(previous):
        previous(signum, frame)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        raise SystemExit(128 + signum)
