"""The one resolver of meshchaos's configuration keys.

Every probe, action and control, the ``meshchaos`` command line and the pytest plugin
read their settings here, so a key has one name, one default and one parser. A key's
value comes from, in order:

1. the Chaos Toolkit ``configuration`` the activity was given (which chaoslib built from
   ``chaos run --var KEY=VALUE``, then the experiment's ``{"type": "env", "key":
   "MESHCHAOS_<KEY>"}`` declaration, then that declaration's ``default``);
2. the environment variable ``MESHCHAOS_<KEY>`` (for callers outside ``chaos run`` and
   for keys an experiment does not declare);
3. the default below, which is the reference chain's (``fixtures/k8s``).

An empty string counts as unset at every level, as chaoslib's env declarations give ``""``
for "no value". Values are parsed and checked when they are read, and a bad one raises
:class:`probes.errors.ConfigurationError` naming the key and the value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from localmesh.manifests import DEFAULT_MANIFESTS
from localmesh.statedir import DEFAULT_STATE_DIR
from probes.errors import ConfigurationError

__all__ = [
    "DEFAULTS",
    "ENV_PREFIX",
    "KEYS",
    "Settings",
    "env_name",
    "raw_value",
    "resolve",
]

ENV_PREFIX = "MESHCHAOS_"

# Key -> (default, what it is). The defaults describe the reference chain of fixtures/k8s.
KEYS: dict[str, tuple[str, str]] = {
    "target": ("local", "where to run: local (the embedded mesh) or kubernetes"),
    "kubeconfig": ("", "kubeconfig file (local: the mesh's own; kubernetes: the default one)"),
    "namespace": ("shop", "namespace of the services under test"),
    "ingress_url": ("", "URL of the ingress gateway (local: from the mesh's endpoints)"),
    "traces_url": ("", "URL of the Jaeger/Tempo query API (local: from the mesh's endpoints)"),
    "traces_api": ("jaeger", "trace query API: jaeger or tempo"),
    "meshchaos_state_dir": (str(DEFAULT_STATE_DIR), "state dir of the local mesh"),
    "meshchaos_manifests": (str(DEFAULT_MANIFESTS),
                            "comma-separated manifest dirs the local mesh loads"),
    "chain_defect": ("", "local only: run a defective twin of the reference chain"),
    "chain_defect_hop": ("", "local only: the deployment that runs the twin"),
    "chain_defect_env": ("", "local only: KEY=VALUE;... extra env of the twin's hop"),
    "mesh_set_env": ("", "local only: NS/DEPLOY:KEY=VALUE;... env for the local mesh's "
                     "deployments, as `meshchaos up --set-env` (e.g. a twin of your own)"),
    "allowed_namespaces": ("", "namespaces chaos may touch (comma list; default: namespace)"),
    "dry_run": ("false", "true: print the chaos objects instead of applying them"),
    "report_dir": ("reports/runs", "where runs write their reports"),
    "span_export_lag_s": ("", "how long a span may take to reach the trace API (s)"),
    "entry_path": ("/", "path (and query) of the request the probes send through the ingress"),
    "entry_headers": ("{}", "JSON object of extra headers on the probes' requests"),
    "target_service": ("", "the service the experiment's fault hits"),
    "target_caller": ("", "the service that calls target_service, where the experiment needs it"),
    "partition_peer": ("", "the service cut off from target_service (partition experiments)"),
    "side_service": ("", "the optional side call that fails (sidecar-failure)"),
    "call_tree": ("", "optional expectation: JSON {entry, calls: {hop: [callee, ...]}}"),
    "broker_service": ("", "the message broker's Service (messaging experiments)"),
    "producer_service": ("", "the service that publishes a message per request"),
    "consumer_service": ("", "the workload that consumes those messages (its app label)"),
    "broker_url": ("", "AMQP URL the probes reach the broker at (local: the broker pod's own "
                   "port; kubernetes: e.g. a port-forward, amqp://user:pass@127.0.0.1:5672/)"),
    "broker_firehose": ("enable", "enable: the probes turn RabbitMQ's firehose on "
                        "(rabbitmqctl trace_on); already-on: they only read it"),
    "run_id": ("", "the run's id (set by the safety control)"),
}
DEFAULTS: dict[str, str] = {key: default for key, (default, _) in KEYS.items()}

_TARGETS = ("local", "kubernetes")
_TRACE_APIS = ("jaeger", "tempo")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
# DNS-1123 label: Service and namespace names (Kubernetes' own rule).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SERVICE_KEYS = ("target_service", "target_caller", "partition_peer", "side_service",
                 "broker_service", "producer_service", "consumer_service")
_FIREHOSE = ("enable", "already-on")


def env_name(key: str) -> str:
    """``entry_path`` -> ``MESHCHAOS_ENTRY_PATH``; ``meshchaos_state_dir`` ->
    ``MESHCHAOS_STATE_DIR`` (the prefix is not doubled: that is the variable the
    experiments declare, and the one users set)."""
    return ENV_PREFIX + key.upper().removeprefix(ENV_PREFIX)


def raw_value(configuration: Mapping[str, Any] | None, key: str,
              env: Mapping[str, str] | None = None) -> Any:
    """The key's value before parsing: configuration, then environment, then default."""
    if key not in KEYS:
        raise ConfigurationError(f"unknown configuration key '{key}'; known: {sorted(KEYS)}")
    value = (configuration or {}).get(key)
    if value is not None and value != "":
        return value
    from_env = (os.environ if env is None else env).get(env_name(key), "")
    return from_env if from_env != "" else DEFAULTS[key]


@dataclass(frozen=True)
class Settings:
    """Every configuration key, parsed. Optional service keys are ``""`` when unset."""

    target: str
    kubeconfig: str
    namespace: str
    ingress_url: str
    traces_url: str
    traces_api: str
    state_dir: str
    manifests: tuple[str, ...]
    chain_defect: str
    chain_defect_hop: str
    chain_defect_env: str
    mesh_set_env: tuple[tuple[str, str, str, str], ...]
    allowed_namespaces: tuple[str, ...]
    dry_run: bool
    report_dir: str
    span_export_lag_s: float | None
    entry_path: str
    entry_headers: Mapping[str, str]
    target_service: str
    target_caller: str
    partition_peer: str
    side_service: str
    broker_service: str
    producer_service: str
    consumer_service: str
    broker_url: str
    broker_firehose: str
    call_tree: Mapping[str, Any] | None
    run_id: str

    def service(self, key: str) -> str:
        """The value of one of the service keys, or an error saying the key must be set."""
        if key not in _SERVICE_KEYS:
            raise ConfigurationError(f"'{key}' is not a service key; service keys: "
                                     f"{list(_SERVICE_KEYS)}")
        value: str = getattr(self, key)
        if not value:
            raise ConfigurationError(f"configuration key '{key}' is required here: name the "
                                     f"service (--var {key}=<service>)")
        return value


def _text(configuration: Mapping[str, Any] | None, key: str,
          env: Mapping[str, str] | None) -> str:
    return str(raw_value(configuration, key, env)).strip()


def _choice(value: str, key: str, choices: tuple[str, ...]) -> str:
    lowered = value.lower()
    if lowered not in choices:
        raise ConfigurationError(f"configuration key '{key}' must be one of {list(choices)}, "
                                 f"got '{value}'")
    return lowered


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"configuration key '{key}' must be true or false, got '{value}'")


def _names(value: Any, key: str) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    for name in names:
        _name(name, key)
    return names


def _name(value: str, key: str) -> str:
    if value and not _NAME.match(value):
        raise ConfigurationError(f"configuration key '{key}': '{value}' is not a Kubernetes "
                                 "name (lowercase letters, digits and '-', at most 63)")
    return value


def _lag(value: str) -> float | None:
    if value == "":
        return None
    try:
        lag = float(value)
    except ValueError:
        lag = -1.0
    if not 0 < lag <= 60:
        raise ConfigurationError(f"configuration key 'span_export_lag_s' must be seconds in "
                                 f"(0, 60], got '{value}'")
    return lag


def _path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ConfigurationError(f"configuration key 'entry_path' must be a request path "
                                 f"starting with '/', got '{value}'")
    return value


def _json_object(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(str(value))
    except ValueError as exc:
        raise ConfigurationError(f"configuration key '{key}' is not JSON: {exc} (got "
                                 f"'{value}')") from exc
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"configuration key '{key}' must be a JSON object, got "
                                 f"'{value}'")
    return parsed


def _headers(value: Any) -> dict[str, str]:
    parsed = _json_object(value, "entry_headers")
    bad = [k for k, v in parsed.items() if not isinstance(v, str) or not k.strip()]
    if bad:
        raise ConfigurationError(f"configuration key 'entry_headers': header '{bad[0]}' "
                                 f"must map a name to a string, got {parsed[bad[0]]!r}")
    return {k.strip().lower(): v for k, v in parsed.items()}


def _amqp_url(value: str) -> str:
    if value and not value.startswith(("amqp://", "amqps://")):
        raise ConfigurationError(f"configuration key 'broker_url' must be an amqp:// or "
                                 f"amqps:// URL, got '{value}'")
    return value


def _set_env(value: str) -> tuple[tuple[str, str, str, str], ...]:
    """``store/catalog:STORE_DEFECT=stale-budget;…`` -> (namespace, deployment, key, value)."""
    out = []
    for item in filter(None, (part.strip() for part in value.split(";"))):
        target, sep, assignment = item.partition(":")
        namespace, slash, deployment = target.partition("/")
        key, eq, env_value = assignment.partition("=")
        if not (sep and slash and eq and namespace and deployment and key.strip()):
            raise ConfigurationError(f"configuration key 'mesh_set_env': '{item}' is not "
                                     "NAMESPACE/DEPLOYMENT:KEY=VALUE (entries separated by ';')")
        out.append((namespace.strip(), deployment.strip(), key.strip(), env_value.strip()))
    return tuple(out)


def resolve(configuration: Mapping[str, Any] | None,
            env: Mapping[str, str] | None = None) -> Settings:
    """Parse every key of ``configuration`` (see the module docstring for the order)."""
    def text(key: str) -> str:
        return _text(configuration, key, env)

    namespace = _name(text("namespace"), "namespace")
    allowed = _names(raw_value(configuration, "allowed_namespaces", env), "allowed_namespaces")
    tree = raw_value(configuration, "call_tree", env)
    return Settings(
        target=_choice(text("target"), "target", _TARGETS),
        kubeconfig=text("kubeconfig"),
        namespace=namespace,
        ingress_url=text("ingress_url").rstrip("/"),
        traces_url=text("traces_url").rstrip("/"),
        traces_api=_choice(text("traces_api"), "traces_api", _TRACE_APIS),
        state_dir=text("meshchaos_state_dir"),
        manifests=tuple(p.strip() for p in text("meshchaos_manifests").split(",")
                        if p.strip()),
        chain_defect=text("chain_defect"),
        chain_defect_hop=text("chain_defect_hop"),
        chain_defect_env=text("chain_defect_env"),
        mesh_set_env=_set_env(text("mesh_set_env")),
        allowed_namespaces=allowed or (namespace,),
        dry_run=_flag(raw_value(configuration, "dry_run", env), "dry_run"),
        report_dir=text("report_dir"),
        span_export_lag_s=_lag(text("span_export_lag_s")),
        entry_path=_path(text("entry_path")),
        entry_headers=_headers(raw_value(configuration, "entry_headers", env)),
        call_tree=_json_object(tree, "call_tree") if tree not in ("", None) else None,
        run_id=text("run_id"),
        broker_url=_amqp_url(text("broker_url")),
        broker_firehose=_choice(text("broker_firehose"), "broker_firehose", _FIREHOSE),
        **{key: _name(text(key), key) for key in _SERVICE_KEYS},
    )
