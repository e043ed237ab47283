"""The command line's own errors are meshchaos.errors types, and ``main`` turns them into
exit code 1 with ``meshchaos <command>: <message>`` on stderr (the message is the
behaviour there: it is what the user reads)."""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import pytest

from meshchaos.cli import main
from meshchaos.commands import api_get
from meshchaos.commands.up import parse_set_env
from meshchaos.errors import MeshApiError, MeshchaosError, UsageError


@pytest.mark.parametrize("value", ["shop/orders", "orders:KEY=1", "shop/orders:KEY", "/:K=v"])
def test_a_malformed_set_env_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError):
        parse_set_env([value])


def test_a_well_formed_set_env_parses() -> None:
    assert parse_set_env(["shop/orders:A=1", "shop/orders:B=x=y"]) == {
        ("shop", "orders"): {"A": "1", "B": "x=y"}}


def test_a_mesh_api_that_does_not_answer_is_a_mesh_api_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(MeshApiError, match="did not answer GET /api/v1/pods"):
        api_get(f"http://127.0.0.1:{port}", "/api/v1/pods", timeout=1.0)


def test_main_reports_a_usage_error_with_exit_code_1(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    try:
        code = main(["up", "--manifests", str(missing), "--state-dir", str(tmp_path / "s")])
    finally:
        gc.enable()  # `up` turns the collector off for the mesh's start
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"meshchaos up: --manifests {missing}: no such file or directory")
    assert issubclass(UsageError, MeshchaosError) and issubclass(UsageError, ValueError)
