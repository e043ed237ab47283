"""``python -m localmesh.rabbitmq``: Debian's RabbitMQ broker as a process of a local pod.

A Deployment runs it with ``meshchaos.io/local-command: "python -m localmesh.rabbitmq"``
(fixtures/broker/k8s). On a cluster the same Deployment runs the ``rabbitmq`` image; here
the supervisor gives the app its AMQP port in ``PORT`` and its own directory under the
state dir in ``MESHCHAOS_DATA_DIR``, and this launcher makes the broker a node of its own:

- node name ``rabbit-<pod>@localhost`` (``RABBITMQ_NODENAME``), AMQP on ``127.0.0.1:$PORT``;
- its own ``epmd`` on a free loopback port (``ERL_EPMD_PORT``), run in the foreground as a
  child of this process, never the machine's shared daemon on 4369 that Erlang would start
  detached (and that would outlive the pod); the node is told not to start one
  (``-start_epmd false``);
- the distribution port (``RABBITMQ_DIST_PORT``) free and on loopback;
- data, logs, config, enabled plugins, cookie (``HOME``) below ``MESHCHAOS_DATA_DIR``; the
  broker logs to stdout (``RABBITMQ_LOGS=-``), which is the container log;
- a private ``RABBITMQ_HOME`` (links into the package) whose ``plugins`` holds only the
  applications the broker and the enabled plugins need: the package puts its 70 plugin
  directories on the Erlang code path, and every module the boot loads is searched along it
  (3.4 s to the AMQP listener here, against 4.8 s with the whole directory).

Every process it starts carries ``MESHCHAOS_BROKER_DATA=<data dir>`` in its environment, so
:func:`stop_orphans` finds a broker a killed mesh left behind (``meshchaos down`` and
``meshchaos abort`` call it) without trusting pid files.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from localmesh.errors import ProcessError

__all__ = [
    "BROKER_MARKER",
    "PACKAGE",
    "SERVER",
    "broker_env",
    "check_objects",
    "cli_env",
    "ctl",
    "find_orphans",
    "require_server",
    "stop_orphans",
]

COMMAND_ANNOTATION = "meshchaos.io/local-command"  # the supervisor's contract (podspec)
PACKAGE = "rabbitmq-server"
# The real start script: /usr/sbin/rabbitmq-server is a wrapper that su's to the rabbitmq
# user and writes into /var/log/rabbitmq; this one runs as the caller with our environment.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
BROKER_MARKER = "MESHCHAOS_BROKER_DATA"
_STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def require_server(server: Path = SERVER) -> Path:
    """The broker's start script; ProcessError naming the Debian package when it is absent."""
    if not os.access(server, os.X_OK):
        raise ProcessError(
            f"{server} is missing: the broker pod runs Debian's {PACKAGE} package, which is not "
            f"installed; install it with `apt-get install -y {PACKAGE}` (see README.md)")
    epmd = shutil.which("epmd")
    if epmd is None:
        raise ProcessError(f"epmd is not on PATH: the {PACKAGE} package pulls in erlang-base; "
                           f"reinstall it with `apt-get install -y {PACKAGE}`")
    return server


def _runs_broker(obj: Mapping[str, Any]) -> bool:
    template = (obj.get("spec") or {}).get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    command = str(annotations.get(COMMAND_ANNOTATION) or "").split()
    return any(command[i:i + 2] == ["-m", __name__] for i in range(len(command)))


def check_objects(objects: Iterable[Mapping[str, Any]], server: Path = SERVER) -> None:
    """Before any pod starts: a Deployment that runs this launcher needs the package; the
    error names the Deployment and the package (instead of a pod that never turns Ready)."""
    for obj in objects:
        if obj.get("kind") == "Deployment" and _runs_broker(obj):
            meta = obj.get("metadata") or {}
            try:
                require_server(server)
            except ProcessError as exc:
                raise ProcessError(f"deployment {meta.get('namespace') or 'default'}/"
                                   f"{meta.get('name')}: {exc}") from None


def _free_port() -> int:
    # The kernel picks; the window until epmd / the node bind it is the start-up itself.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_name(pod: str) -> str:
    """``rabbit-<pod>@localhost``: unique per pod (pod names are unique in a mesh), short name."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in pod) or "broker"
    return f"rabbit-{safe}@localhost"


def broker_env(base: Mapping[str, str], *, data: Path, amqp_port: int, epmd_port: int,
               dist_port: int, pod: str) -> dict[str, str]:
    """The environment of the broker's processes (RabbitMQ's documented variables)."""
    env = dict(base)
    env.update({
        "HOME": str(data),  # .erlang.cookie: the node and the CLI tools read the same one
        "RABBITMQ_NODENAME": node_name(pod),
        "RABBITMQ_USE_LONGNAME": "false",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data / "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(data / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(data / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(data / "rabbitmq.pid"),
        # No shared epmd, distribution on loopback only, and no scheduler busy-waiting: the
        # VM's spinning schedulers took CPU from the other pods starting on two cores.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
            "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1} "
            "+sbwt none +sbwtdcpu none +sbwtdio none",
        BROKER_MARKER: str(data),
    })
    return env


_APPLICATIONS = re.compile(r"\{applications,\s*\[([^\]]*)\]")


def _app_closure(plugins_dir: Path, roots: Iterable[str]) -> list[Path]:
    """The package's application directories ``roots`` need, by their ``.app`` files'
    ``applications`` lists (OTP's own applications are not in the plugins directory)."""
    dirs = {p.name.rsplit("-", 1)[0]: p for p in plugins_dir.iterdir() if p.is_dir()}
    wanted: dict[str, Path] = {}
    todo = [r for r in roots if r in dirs]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = dirs[name]
        try:
            spec = (dirs[name] / "ebin" / f"{name}.app").read_text(errors="replace")
        except OSError:
            continue
        for match in _APPLICATIONS.finditer(spec):
            todo += [a.strip() for a in match.group(1).split(",") if a.strip() in dirs]
    return sorted(wanted.values())


def private_home(data: Path, server: Path, plugins: list[str]) -> Path:
    """A ``RABBITMQ_HOME`` of links into the package, its ``plugins`` reduced to what the
    broker (``rabbit``) and the enabled plugins need; its ``sbin`` is the scripts dir."""
    package = server.resolve().parent.parent  # .../rabbitmq_server-<version>
    home = data / "home"
    (home / "sbin").mkdir(parents=True, exist_ok=True)
    (home / "plugins").mkdir(exist_ok=True)
    for script in (package / "sbin").iterdir():
        link = home / "sbin" / script.name
        if not link.exists():
            link.symlink_to(script)
    for extra in ("escript",):
        link = home / extra
        if (package / extra).exists() and not link.exists():
            link.symlink_to(package / extra)
    for app in _app_closure(package / "plugins", ["rabbit", *plugins]):
        link = home / "plugins" / app.name
        if not link.exists():
            link.symlink_to(app)
    return home


def _write_config(data: Path, plugins: str) -> None:
    for sub in ("mnesia", "log"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    # Listening address and port come from RABBITMQ_NODE_IP_ADDRESS/PORT; nothing else here
    # changes the broker's defaults, so the semantics are RabbitMQ's own.
    names = [p.strip() for p in plugins.split(",") if p.strip()]
    (data / "enabled_plugins").write_text(f"[{','.join(names)}].\n")
    (data / "rabbitmq-env.conf").write_text("")


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec hook: the child gets ``sig`` when this launcher dies (PR_SET_PDEATHSIG)."""
    def hook() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return hook


def run(environ: Mapping[str, str]) -> int:
    """Start epmd and the broker, wait until the broker exits, stop epmd; the broker's code."""
    server = require_server()
    try:
        data = Path(environ["MESHCHAOS_DATA_DIR"])
        amqp_port = int(environ["PORT"])
    except (KeyError, ValueError) as exc:
        raise ProcessError(f"localmesh.rabbitmq needs MESHCHAOS_DATA_DIR and PORT from the local "
                           f"mesh's supervisor: {exc!r} is missing or not a number") from exc
    pod = environ.get("POD_NAME", "broker")
    data.mkdir(parents=True, exist_ok=True)
    _write_config(data, environ.get("RABBITMQ_PLUGINS", ""))
    plugins = [p.strip() for p in environ.get("RABBITMQ_PLUGINS", "").split(",") if p.strip()]
    env = broker_env(environ, data=data, amqp_port=amqp_port, epmd_port=_free_port(),
                     dist_port=_free_port(), pod=pod)
    env["RABBITMQ_SCRIPTS_DIR"] = str(private_home(data, server, plugins) / "sbin")
    # The fork server's death (a killed mesh) must stop the broker too: this launcher turns
    # it into a SIGTERM it can act on, and hands the same to its children.
    with contextlib.suppress(OSError, AttributeError):
        _die_with_parent(signal.SIGTERM)()
    epmd = subprocess.Popen(
        [shutil.which("epmd") or "epmd", "-port", env["ERL_EPMD_PORT"], "-address", "127.0.0.1"],
        env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(signal.SIGKILL))
    broker = subprocess.Popen([str(server)], env=env, cwd=str(data), stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent(signal.SIGTERM))
    # What the CLI tools need to reach this node (cli_env, ctl): written once it runs.
    (data / _CLI_FILE).write_text(json.dumps({k: env[k] for k in _CLI_KEYS}) + "\n")
    print(f"localmesh.rabbitmq: node {env['RABBITMQ_NODENAME']} amqp 127.0.0.1:{amqp_port} "
          f"dist {env['RABBITMQ_DIST_PORT']} epmd {env['ERL_EPMD_PORT']} data {data}", flush=True)

    def stop(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            broker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = broker.wait()
    # The start script waits for the VM; anything of the broker still alive is killed here.
    for pid in find_orphans(data):
        if pid != os.getpid() and pid != epmd.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    epmd.terminate()
    try:
        epmd.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        epmd.kill()
    return code


_CLI_FILE = "cli.json"
_CLI_KEYS = ("HOME", "RABBITMQ_NODENAME", "RABBITMQ_USE_LONGNAME", "ERL_EPMD_PORT",
             "ERL_EPMD_ADDRESS", "RABBITMQ_CONF_ENV_FILE", "RABBITMQ_SCRIPTS_DIR",
             "RABBITMQ_ENABLED_PLUGINS_FILE", "RABBITMQ_CONFIG_FILE")


def cli_env(data: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment under which ``rabbitmqctl`` / ``rabbitmq-diagnostics`` reach the broker
    of a pod whose ``MESHCHAOS_DATA_DIR`` is ``data``: its cookie (``HOME``), node name and
    epmd port (ProcessError while the broker has not started)."""
    try:
        saved = json.loads((Path(data) / _CLI_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ProcessError(f"no broker runs on {data}: {_CLI_FILE} is missing or unreadable "
                           f"({exc})") from exc
    env = dict(os.environ if base is None else base)
    env.update({str(k): str(v) for k, v in saved.items()})
    return env


def ctl(data: Path, *args: str, tool: str = "rabbitmqctl",
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one of the broker's CLI tools against the pod's node (``ctl(data, "trace_on")``,
    ``ctl(data, "-q", "check_running", tool="rabbitmq-diagnostics")``); each run starts an
    Erlang VM (0.4-0.7 s here)."""
    env = cli_env(data)
    return subprocess.run([str(Path(env["RABBITMQ_SCRIPTS_DIR"]) / tool), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def find_orphans(data_root: Path) -> list[int]:
    """Pids of live processes whose environment marks them as a broker below ``data_root``."""
    root = str(Path(data_root).resolve())
    marker = f"{BROKER_MARKER}=".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(marker):
                value = item[len(marker):].decode(errors="replace")
                if value == root or value.startswith(root + os.sep):
                    found.append(int(entry.name))
                break
    return found


def stop_orphans(data_root: Path, *, timeout: float = 5.0) -> list[int]:
    """SIGKILL every broker process below ``data_root`` and wait until they are gone."""
    victims = [p for p in find_orphans(data_root) if p != os.getpid()]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p)
                                              for p in victims):
        time.sleep(0.02)
    return victims


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def main() -> int:
    try:
        return run(os.environ)
    except ProcessError as exc:
        print(f"localmesh.rabbitmq: {exc}", file=sys.stderr, flush=True)
        return 127


if __name__ == "__main__":
    raise SystemExit(main())
