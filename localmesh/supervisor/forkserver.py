"""A fork server that starts pod processes without paying Python's start-up each time.

A fresh interpreter importing asyncio, httptools and the OpenTelemetry SDK costs
hundreds of milliseconds on a small box; five pods with two processes each would
blow the start-up budget. The server is started once per mesh, imports the
sidecar and the apps' packages up front, then forks one child per container:
a forked child only runs the code that differs.

Protocol (one unix-socket connection per child, abstract namespace):
- client → server: one JSON line ``{"argv", "env", "cwd", "python"}`` sent with
  three file descriptors (stdin, stdout, stderr) plus any extra ones, which the
  child sees as fds 3, 4, …;
- server → client: ``{"pid": N}`` once forked, then ``{"exit": code}`` when the
  child is reaped (a negative code is the killing signal), then EOF.

Every child leads its own process group (so ``killpg`` stops it and whatever it
spawned) inside the server's terminal-less session, and dies with the server
(``PR_SET_PDEATHSIG``); the server dies with the mesh the same way and kills every
child group when it is told to stop.
``python`` children run the command line in the forked interpreter (``-m mod``,
``-c code`` or ``script.py``); others are ``exec``-ed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import pkgutil
import runpy
import selectors
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChildSpec", "main", "set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1
_MAX_FDS = 16
_DEFERRED = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent (thread) dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")


@dataclass
class ChildSpec:
    """What to run in a forked child."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    python: bool
    fds: list[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any], fds: list[int]) -> ChildSpec:
        return cls(argv=[str(a) for a in data["argv"]], env={str(k): str(v) for k, v in
                                                             data["env"].items()},
                   cwd=str(data["cwd"]), python=bool(data["python"]), fds=fds)

    def run(self) -> int:
        """Become the child: wire fds, environment and cwd, then run the command."""
        _wire_fds(self.fds)
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.env)
        if not self.python:
            try:
                os.execvpe(self.argv[0], self.argv, self.env)
            except OSError as exc:
                print(f"exec {self.argv[0]!r} failed: {exc}", file=sys.stderr, flush=True)
                return 127
        return _run_python(self.argv[1:])


def _wire_fds(fds: list[int]) -> None:
    # Extra fds first go out of the low range so dup2 onto 0..n never clobbers one still needed.
    high = [os.dup(fd) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    # The interpreter's stdio objects wrap fds 0-2, but buffer for a pipe; logs must flow per line.
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _run_python(args: list[str]) -> int:
    """Run ``python <args>`` inside this (already initialised) interpreter."""
    while args and args[0] in ("-u", "-B", "-E", "-s", "-S"):
        args = args[1:]
    try:
        if args[:1] == ["-m"] and len(args) >= 2:
            sys.argv = [args[1], *args[2:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[:1] == ["-c"] and len(args) >= 2:
            sys.argv = ["-c", *args[2:]]
            sys.path.insert(0, "")
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        elif args and not args[0].startswith("-"):
            sys.argv = list(args)
            sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
            runpy.run_path(args[0], run_name="__main__")
        else:
            print(f"unsupported python command line: {args!r}", file=sys.stderr, flush=True)
            return 2
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


class _Server:
    """The accept/fork/reap loop; returns a ChildSpec in the child, None when told to stop."""

    def __init__(self, address: str, parent: int) -> None:
        self.parent = parent
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.children: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.server_pid = os.getpid()

    def serve(self) -> ChildSpec | None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the mesh; it stops us
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "reap")
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
        print(json.dumps({"ready": os.getpid()}), flush=True)
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    spec = self._accept()
                    if spec is not None:
                        return spec
                elif key.data == "reap":
                    self._reap()
                elif key.data == "parent" and not os.read(sys.stdin.fileno(), 4096):
                    self.stopping = True  # the mesh closed our stdin: it is gone or stopping
            if os.getppid() != self.parent:
                self.stopping = True
        self._kill_all()
        return None

    def _on_stop(self, *_: object) -> None:
        self.stopping = True

    def _accept(self) -> ChildSpec | None:
        conn, _ = self.listener.accept()
        try:
            spec = self._read_spec(conn)
        except (OSError, ValueError, KeyError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
            conn.close()
            return None
        # Signals wait until the child has its own handlers: a SIGTERM sent right after the
        # fork must kill the child, not run the server's handler in it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
        pid = os.fork()
        if pid == 0:
            self._become_child(conn)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)
            return spec
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)
        # Both sides set the group (the shells' idiom): whichever runs first wins the race,
        # so the group exists before the client can killpg it, without waiting for the child.
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpgid(pid, pid)
        for fd in spec.fds:
            os.close(fd)
        self.children[pid] = conn
        with contextlib.suppress(OSError):  # a client gone away: the child still gets reaped
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        return None

    @staticmethod
    def _read_spec(conn: socket.socket) -> ChildSpec:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, _MAX_FDS)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 16)
            if not more:
                raise ValueError("connection closed before the request was complete")
            data += more
        if len(fds) < 3:
            raise ValueError(f"expected stdin, stdout and stderr fds, got {len(fds)}")
        return ChildSpec.from_json(json.loads(data), fds)

    def _become_child(self, conn: socket.socket) -> None:
        # Its own process group (killpg reaches it and what it spawns); the server's session
        # has no terminal, so no terminal signal reaches it either.
        os.setpgid(0, 0)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.server_pid:
            os._exit(1)  # the server died between fork and prctl
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        for child_conn in self.children.values():
            child_conn.close()
        conn.close()
        self.listener.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            conn.close()

    def _kill_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.children.pop(pid).close()


def _preload(libraries: list[str], trees: list[str]) -> None:
    """Import what the children will need; a failure only costs them start-up time.

    ``libraries`` are imported as named. ``trees`` are packages run as ``-m``: what
    their ``__main__`` imports at module level is imported (it is not run: it may start
    serving at import); a package without ``__main__`` is imported with all its
    submodules; a plain module is skipped.
    """
    names = list(libraries)
    for tree in trees:
        names += _tree_modules(tree)
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - preloading is an optimisation, never fatal
            print(f"forkserver: preload of {name!r} failed: {exc!r}", file=sys.stderr,
                  flush=True)


def _tree_modules(tree: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(tree)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        return []
    main = _main_imports(tree)
    if main is not None:
        # Only the start path: a package's test kits and tools (``fixtures.chain.testing``
        # pulls aiohttp in) cost every mesh start and no pod uses them.
        return [tree, *main]
    return [tree] + [info.name for info in pkgutil.walk_packages(
        spec.submodule_search_locations, prefix=f"{tree}.")
        if info.name.rsplit(".", 1)[-1] != "__main__"]


def _main_imports(package: str) -> list[str] | None:
    """The modules ``package/__main__.py`` imports at module level (None: no such file)."""
    try:
        spec = importlib.util.find_spec(f"{package}.__main__")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    try:
        with open(spec.origin, "rb") as source:
            module = ast.parse(source.read(), spec.origin)
    except (OSError, SyntaxError, ValueError):
        return None
    names: list[str] = []
    for node in _module_level(module.body):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base and base != "__future__":
                names.append(base)
                names += [f"{base}.{alias.name}" for alias in node.names
                          if _is_module(f"{base}.{alias.name}")]
    return names


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import: the body, with the branches of ``try``/``if`` blocks."""
    found: list[ast.stmt] = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.Try):
            found += _module_level(node.body + node.orelse + node.finalbody)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.dump(node.test):
            found += _module_level(node.body + node.orelse)
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localmesh.supervisor.forkserver")
    parser.add_argument("--address", required=True, help="abstract unix socket name")
    parser.add_argument("--parent", type=int, required=True, help="pid of the mesh")
    parser.add_argument("--preload", action="append", default=[], help="a module to import")
    parser.add_argument("--preload-tree", action="append", default=[],
                        help="a package to import with its submodules")
    args = parser.parse_args(argv)
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != args.parent:
        return 1
    gc.disable()  # no sweeps of a heap that only grows while the modules load
    _preload(args.preload, args.preload_tree)
    # Preloaded objects move to a generation the collector never scans: a child's GC then
    # does not touch (and copy-on-write) every shared page.
    gc.freeze()
    gc.enable()
    server = _Server("\0" + args.address, args.parent)
    spec = server.serve()
    if spec is None:
        return 0
    return spec.run()


if __name__ == "__main__":
    sys.exit(main())
