"""``meshchaos plan``: audit a mesh's routes and write the experiments worth running on it.

Reads the namespace's Services, VirtualServices and DestinationRules through the
Kubernetes API and, when traffic can be sent and traced, the call graph the sidecars
record for a few requests through the ingress. Audits the routes along that graph
(timeout inversions, retries beyond the route timeout, edges without a timeout,
per-try timeouts that are never retried, undefined subsets: probes/planning.py), then
writes into --out (default plans/<namespace>) one experiment per edge worth testing,
made from the suite's experiments/*.json with only their configuration defaults, title
and description changed, plus plan.md (findings, edges, files) and plan.json.

Targets: without --kubeconfig, the local mesh of --state-dir (one started by `meshchaos
up`), or, when none runs there, one started from --manifests for the duration. With
--kubeconfig, that cluster; the call graph is observed only when --ingress-url and
--traces-url (or MESHCHAOS_INGRESS_URL / MESHCHAOS_TRACES_URL) say where to send requests
and read traces, else it comes from the VirtualServices alone.

Exit codes: 0 no finding, 1 findings (the experiments are written either way), 2 the plan
could not be made (the message says why).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from localmesh.errors import MeshError
from localmesh.statedir import DEFAULT_STATE_DIR, StateDir
from meshchaos.commands import plain
from meshchaos.errors import MeshApiError, MeshchaosError, UsageError
from probes import config
from probes.errors import ProbeError

__all__ = ["HELP", "register", "run"]

HELP = "audit the mesh's timeouts and retries and write one experiment per edge worth testing"

TEMPLATES = Path(__file__).resolve().parents[2] / "experiments"
_API_TIMEOUT_S = 10.0
_OBSERVE_TIMEOUT_S = 30.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("plan", help=HELP, description=plain(__doc__),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default="", metavar="FILE",
                        help="plan for the cluster of this kubeconfig (default: the local mesh)")
    parser.add_argument("--namespace", default="", metavar="NS",
                        help="namespace of the services (default: the namespace key, "
                             f"{config.DEFAULTS['namespace']})")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write the plan (default: plans/<namespace>)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help=f"state dir of the local mesh (default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--manifests", action="append", type=Path, metavar="DIR",
                        help="manifests of the local mesh: started from them when none runs, "
                             "and the experiments' meshchaos_manifests (default: "
                             f"{config.DEFAULTS['meshchaos_manifests']})")
    parser.add_argument("--entry-path", default="", metavar="PATH",
                        help="path of the requests sent through the ingress (default: the "
                             "entry_path key, else the ingress VirtualService's match)")
    parser.add_argument("--entry-headers", default="", metavar="JSON",
                        help="JSON object of headers on those requests (default: the "
                             "entry_headers key)")
    parser.add_argument("--observe", type=int, default=3, metavar="N",
                        help="requests sent to observe the call graph (0: the "
                             "VirtualServices alone; default 3)")
    parser.add_argument("--ingress-url", default="", metavar="URL",
                        help="with --kubeconfig: the ingress gateway's URL")
    parser.add_argument("--traces-url", default="", metavar="URL",
                        help="with --kubeconfig: the Jaeger/Tempo query API's URL")
    parser.add_argument("--templates", type=Path, default=TEMPLATES, metavar="DIR",
                        help="the experiments the plan is made from (default: experiments/)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the plan; 0 without findings, 1 with, 2 when it could not be made."""
    try:
        return _plan(args)
    except (ProbeError, MeshError, MeshchaosError) as exc:
        print(f"meshchaos plan: {exc}", file=sys.stderr)
        return 2


# -- where the mesh is ----------------------------------------------------------------------

@dataclass
class _Mesh:
    """The API to read, the target to observe (None: static), the experiments' defaults."""

    kubeconfig: str
    settings: config.Settings
    defaults: dict[str, str]
    notes: list[str] = field(default_factory=list)


def _configuration(args: argparse.Namespace, **extra: str) -> dict[str, Any]:
    """The plan's options as configuration keys (unset ones fall back to MESHCHAOS_*)."""
    given = {"namespace": args.namespace, "entry_path": args.entry_path,
             "entry_headers": args.entry_headers,
             "meshchaos_state_dir": str(args.state_dir) if args.state_dir else "",
             "meshchaos_manifests": ",".join(map(str, args.manifests or ())), **extra}
    return {k: v for k, v in given.items() if v}


@contextlib.contextmanager
def _mesh(args: argparse.Namespace) -> Iterator[_Mesh]:
    if args.kubeconfig:
        if not Path(args.kubeconfig).is_file():
            raise UsageError(f"--kubeconfig '{args.kubeconfig}': no such file")
        kubeconfig = str(Path(args.kubeconfig).resolve())
        settings = config.resolve(_configuration(
            args, target="kubernetes", kubeconfig=kubeconfig, ingress_url=args.ingress_url,
            traces_url=args.traces_url))
        defaults = {"target": "kubernetes", "kubeconfig": kubeconfig,
                    "ingress_url": settings.ingress_url, "traces_url": settings.traces_url,
                    "traces_api": settings.traces_api}
        yield _Mesh(kubeconfig, settings, defaults)
        return
    settings = config.resolve(_configuration(args, target="local"))
    missing = [p for p in settings.manifests if not Path(p).exists()]
    if missing:
        raise UsageError(f"--manifests {', '.join(missing)}: no such file or directory "
                         f"(relative to {Path.cwd()})")
    state = StateDir(Path(settings.state_dir))
    defaults = {"target": "local", "meshchaos_state_dir": settings.state_dir,
                "meshchaos_manifests": ",".join(settings.manifests)}
    notes = []
    if state.live_pid() is not None:
        notes.append(f"planned on the live local mesh of state dir {state.path}")
        if not args.manifests:
            notes.append(f"the experiments start a mesh from {','.join(settings.manifests)} "
                         "when none runs: pass --manifests with the manifests of yours")
        yield _Mesh(str(state.kubeconfig), settings, defaults, notes)
        return
    with _started_mesh(settings) as kubeconfig:
        notes.append(f"planned on a local mesh started from {','.join(settings.manifests)} "
                     "for the duration (the experiments start their own)")
        yield _Mesh(kubeconfig, settings, defaults, notes)


@contextlib.contextmanager
def _started_mesh(settings: config.Settings) -> Iterator[str]:
    """A local mesh of the settings' manifests and state dir until the block ends."""
    from localmesh.daemon import MeshDaemon

    daemon = MeshDaemon([Path(p) for p in settings.manifests], Path(settings.state_dir),
                        ready_timeout=60.0, owned=True)
    print(f"meshchaos plan: no mesh runs from {settings.state_dir}; starting one from "
          f"{','.join(settings.manifests)}", file=sys.stderr, flush=True)
    daemon.launch()
    try:
        daemon.wait_ready(lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        yield str(daemon.state.kubeconfig)
    finally:
        daemon.stop()


# -- reading --------------------------------------------------------------------------------

def _api_client(kubeconfig: str) -> Any:
    from probes.target import Target

    return Target("kubernetes", "", "", "", "jaeger", kubeconfig).api_client()


def _unreachable(kubeconfig: str, api_client: Any, what: str, exc: Exception) -> MeshApiError:
    host = getattr(getattr(api_client, "configuration", None), "host", "?")
    status = getattr(exc, "status", None)
    detail = f"http {status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)
    return MeshApiError(f"could not read {what} through the Kubernetes API of kubeconfig "
                        f"'{kubeconfig}' ({host}): {detail}")


def _read_objects(api_client: Any, kubeconfig: str, namespace: str
                  ) -> tuple[list[Any], list[Any], list[Any]]:
    """The namespace's Services, VirtualServices and DestinationRules."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from probes.coreapi import core_get_json

    errors = (ApiException, OSError, HTTPError, ValueError)
    what = f"the Services of namespace '{namespace}'"
    try:
        services = core_get_json(api_client, f"/api/v1/namespaces/{quote(namespace)}/services",
                                 timeout_s=_API_TIMEOUT_S).get("items") or []
    except errors as exc:
        raise _unreachable(kubeconfig, api_client, what, exc) from exc
    custom = client.CustomObjectsApi(api_client)
    found: list[list[Any]] = []
    for plural in ("virtualservices", "destinationrules"):
        items: list[Any] = []
        for version in ("v1", "v1beta1", "v1alpha3"):
            try:
                doc = custom.list_namespaced_custom_object(
                    "networking.istio.io", version, namespace, plural,
                    _request_timeout=_API_TIMEOUT_S)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise _unreachable(kubeconfig, api_client,
                                   f"the {plural} of namespace '{namespace}'", exc) from exc
            except errors as exc:
                raise _unreachable(kubeconfig, api_client,
                                   f"the {plural} of namespace '{namespace}'", exc) from exc
            items = list(doc.get("items") or []) if isinstance(doc, dict) else []
            break
        found.append(items)
    return services, found[0], found[1]


def _honours_app_headers(api_client: Any) -> bool:
    from probes.errors import EvidenceError
    from probes.evidence.kube import read_mesh_settings

    try:
        return read_mesh_settings(api_client, timeout_s=_API_TIMEOUT_S).honor_app_envoy_headers
    except EvidenceError:
        return False


def _observe(mesh: _Mesh, requests: int, entry_path: str) -> Any:
    """The call tree the sidecars recorded for ``requests`` requests (None: not observed,
    with the reason in the notes)."""
    from probes.deadline import Deadline
    from probes.evidence.collect import collect
    from probes.evidence.request import CallTree
    from probes.target import target_of
    from probes.traffic import Load, send_load

    if requests <= 0:
        mesh.notes.append("--observe 0: the call graph comes from the VirtualServices alone")
        return None
    settings = dataclasses.replace(mesh.settings, entry_path=entry_path)
    try:
        target = target_of(settings)
    except ProbeError as exc:
        mesh.notes.append(f"no call graph observed ({exc}): pass --ingress-url and "
                          "--traces-url to observe one")
        return None
    deadline = Deadline(_OBSERVE_TIMEOUT_S, "meshchaos plan")
    sent = send_load(Load(url=target.entry_url(), run_id="plan", count=requests, rate=20.0,
                          duration_s=max(1.0, requests / 20 + 1), concurrency=4,
                          timeout_s=10.0, headers=target.request_headers(None)))
    statuses = sorted({str(r.status or r.error) for r in sent})
    try:
        tree: CallTree = collect(target, sent, None, deadline).tree
    except ProbeError as exc:
        mesh.notes.append(f"no call graph observed from {requests} requests to "
                          f"{target.entry_url()} (statuses {', '.join(statuses)}): {exc}")
        return None
    mesh.notes.append(f"call graph observed from {requests} requests to {target.entry_url()} "
                      f"(statuses {', '.join(statuses)}): {json.dumps(tree.describe())}")
    if not tree.edges():
        mesh.notes.append(f"the requests reached only {tree.entry}: pass --entry-path with a "
                          "path your entry service answers by calling the others")
    return tree


# -- the plan -------------------------------------------------------------------------------

def _entry_path(args: argparse.Namespace, virtual_services: list[Any], namespace: str) -> str:
    """--entry-path, else the entry_path key when set, else the ingress route's match."""
    from probes.planning import entry_path_of, routes_of

    if args.entry_path:
        return str(args.entry_path)
    if config.raw_value(None, "entry_path") != config.DEFAULTS["entry_path"]:
        return config.resolve(None).entry_path
    return entry_path_of(routes_of(virtual_services, namespace)) or config.DEFAULTS["entry_path"]


def _plan(args: argparse.Namespace) -> int:
    from probes.planning import make_plan

    with _mesh(args) as mesh:
        namespace = mesh.settings.namespace
        api_client = _api_client(mesh.kubeconfig)
        try:
            services, virtual_services, rules = _read_objects(api_client, mesh.kubeconfig,
                                                              namespace)
            if not services:
                raise UsageError(f"namespace '{namespace}' has no Service (read through "
                                 f"kubeconfig '{mesh.kubeconfig}'): nothing to plan; pass "
                                 "--namespace with the namespace of your services")
            honor = _honours_app_headers(api_client)
        finally:
            api_client.close()
        entry_path = _entry_path(args, virtual_services, namespace)
        tree = _observe(mesh, args.observe, entry_path)
        plan = make_plan(namespace, services, virtual_services, rules, observed=tree,
                         honor_app_headers=honor, entry_path=entry_path, notes=mesh.notes)
    out = args.out or Path("plans") / namespace
    defaults = {**mesh.defaults, "entry_path": plan.entry_path,
                "entry_headers": json.dumps(dict(mesh.settings.entry_headers))}
    written = _write(plan, out, args.templates, defaults)
    _print(plan, out, written)
    return 1 if plan.findings else 0


def _template(templates: Path, name: str) -> Mapping[str, Any]:
    path = templates / f"{name}.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--templates {templates}: cannot read template '{path.name}': "
                         f"{exc}") from exc
    if not isinstance(doc, dict):
        raise UsageError(f"--templates {templates}: '{path.name}' is not a JSON object")
    return doc


def _write(plan: Any, out: Path, templates: Path, defaults: Mapping[str, str]) -> list[Path]:
    from probes.planning import plan_json, render_experiment, render_summary

    out.mkdir(parents=True, exist_ok=True)
    _forget_previous(out, {p.file_name for p in plan.experiments})
    written = []
    for planned in plan.experiments:
        doc = render_experiment(_template(templates, planned.template), planned,
                                namespace=plan.namespace, defaults=defaults)
        path = out / planned.file_name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    (out / "plan.md").write_text(render_summary(
        plan, {p.file_name: p.template for p in plan.experiments}))
    (out / "plan.json").write_text(plan_json(plan))
    return written


def _forget_previous(out: Path, keep: set[str]) -> None:
    """Remove the experiments an earlier plan of ``out`` wrote that this one does not."""
    try:
        earlier = json.loads((out / "plan.json").read_text())
    except (OSError, ValueError):
        return
    for item in earlier.get("experiments") or () if isinstance(earlier, dict) else ():
        name = str(item.get("file", "")) if isinstance(item, dict) else ""
        if name and "/" not in name and name not in keep:
            (out / name).unlink(missing_ok=True)


def _print(plan: Any, out: Path, written: list[Path]) -> None:
    print(f"meshchaos plan: namespace {plan.namespace}, {len(plan.services)} services, "
          f"{len(plan.edges)} edges ({plan.graph}), {len(plan.findings)} findings")
    for note in plan.notes:
        print(f"  note: {note}")
    for finding in plan.findings:
        print(f"  finding [{finding.rule}] {finding.message}")
    for path in written:
        print(f"  wrote {path}")
    print(f"plan: {out / 'plan.md'}")
