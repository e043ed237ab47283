"""The fork server: every container process in its own session, dying with the mesh.

docs/architecture.md "Pods as processes": each process in its own session/process
group, dying with the mesh (PR_SET_PDEATHSIG in the child, killpg on stop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localmesh.supervisor.spawner import Child, ForkServer


def stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()


def alive(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


async def gone(pid: int, limit_s: float = 5.0) -> bool:
    for _ in range(int(limit_s / 0.02)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
async def server() -> AsyncIterator[ForkServer]:
    fs = ForkServer(["json"], ["localmesh.http"])
    await fs.start()
    try:
        yield fs
    finally:
        await fs.stop()


async def run(fs: ForkServer, argv: list[str], *, python: bool = True,
              env: dict[str, str] | None = None, cwd: Path = Path("/")) -> tuple[Child, int]:
    """Spawn with stdout+stderr into one pipe; return the child and the pipe's read end."""
    read_fd, write_fd = os.pipe()
    try:
        child = await fs.spawn(argv, env=env or {"PATH": os.environ["PATH"]}, cwd=cwd,
                               python=python, stdout=write_fd, stderr=write_fd)
    finally:
        os.close(write_fd)
    return child, read_fd


def drain(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


async def test_python_child_gets_exactly_its_env_cwd_and_argv(server: ForkServer,
                                                              tmp_path: Path) -> None:
    code = ("import os, sys; print(sorted(os.environ.items())); print(os.getcwd()); "
            "print(sys.argv[1:]); print('oops', file=sys.stderr); sys.exit(7)")
    child, out = await run(server, [sys.executable, "-c", code, "a", "b"],
                           env={"ONLY": "this"}, cwd=tmp_path)
    assert await child.wait() == 7
    lines = (await asyncio.to_thread(drain, out)).splitlines()
    assert lines == ["[('ONLY', 'this')]", str(tmp_path), "['a', 'b']", "oops"]


async def test_child_leads_its_own_process_group_in_a_terminal_less_session(
        server: ForkServer) -> None:
    child, out = await run(server, [sys.executable, "-c", "import time; time.sleep(30)"])
    fields = stat_fields(child.pid)
    assert int(fields[2]) == child.pid  # process group
    assert server.pid is not None and int(fields[3]) == server.pid  # the server's session
    assert int(fields[4]) == 0  # no controlling terminal
    assert int(fields[1]) == server.pid  # forked by the server, not by us
    child.signal_group(signal.SIGTERM)
    assert await child.wait() == -signal.SIGTERM
    os.close(out)


async def test_killpg_takes_the_apps_own_children_too(server: ForkServer) -> None:
    child, out = await run(server, ["/bin/sh", "-c", "sleep 30 & echo $!; wait"], python=False)
    line = await asyncio.to_thread(os.read, out, 64)
    grandchild = int(line.decode().strip())
    assert alive(grandchild)
    child.signal_group(signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL
    assert await gone(grandchild)
    os.close(out)


async def test_a_command_that_cannot_be_executed_exits_127(server: ForkServer) -> None:
    child, out = await run(server, ["/nonexistent/binary"], python=False)
    assert await child.wait() == 127
    assert "exec '/nonexistent/binary' failed" in await asyncio.to_thread(drain, out)


async def test_children_die_with_the_fork_server(server: ForkServer) -> None:
    """PR_SET_PDEATHSIG: a fork server killed outright takes every child with it."""
    child, out = await run(server, [sys.executable, "-c", "import time; time.sleep(30)"])
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    assert await child.wait() == -9 or await gone(child.pid)
    assert await gone(child.pid)
    os.close(out)


async def test_a_spawn_racing_the_servers_death_is_served_by_its_replacement(
        server: ForkServer) -> None:
    """A pod whose container died with the fork server restarts at once, often before the
    loop has reaped the dead server: that restart must not fail (and count twice)."""
    old = server.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)  # no await before the spawn: the death is not reaped yet
    child, out = await run(server, [sys.executable, "-c", "print('up')"])
    assert server.pid not in (None, old)
    assert await child.wait() == 0
    assert await asyncio.to_thread(drain, out) == "up\n"


async def test_stopping_the_server_kills_every_child_group() -> None:
    fs = ForkServer()
    await fs.start()
    child, out = await run(fs, [sys.executable, "-c", "import time; time.sleep(30)"])
    await fs.stop()
    assert await gone(child.pid)
    os.close(out)


def test_a_package_run_as_m_preloads_what_its_main_imports_and_not_its_test_kits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app server imports the start path of ``python -m <package>`` (every module-level
    import of its ``__main__``, relative ones resolved) without running ``__main__`` and
    without the package's other modules, such as a test kit that pulls a web framework in."""
    from localmesh.supervisor.forkserver import _tree_modules

    pkg = tmp_path / "shopapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "server.py").write_text("")
    (pkg / "testing.py").write_text("raise RuntimeError('never preloaded')\n")
    (pkg / "__main__.py").write_text(
        "import json\nfrom . import server\ntry:\n    import uvloop\nexcept ImportError:\n"
        "    pass\nif __name__ == '__main__':\n    raise SystemExit('never run')\n"
        "def main():\n    import shopapp.testing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _tree_modules("shopapp") == ["shopapp", "json", "shopapp", "shopapp.server",
                                        "uvloop"]


def test_a_package_without_main_is_preloaded_whole(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from localmesh.supervisor.forkserver import _tree_modules

    pkg = tmp_path / "libpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _tree_modules("libpkg") == ["libpkg", "libpkg.a"]
