"""The sidecar exports its spans with the mesh receiver's token, and never shows it.

The mesh's OTLP receiver takes only exports bearing its token (docs/fidelity.md §8.5); the
control plane hands the token to each sidecar in the ``mesh.otlp_headers`` of its
configuration document. Two real sidecar processes in front of the mesh's own receiver
(``create_otlp_app`` with a token) on loopback: with the header the spans of a call are
stored, with another token none is. The admin listener is on loopback, open to every local
user, so ``GET /config`` shows the header's name with its value ``[redacted]``, as Envoy's
``/config_dump`` shows a field marked sensitive (``MessageUtil::redact``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from localmesh.kubeconfig import new_token
from localmesh.tracestore import TraceStore, create_otlp_app
from tests.conformance.conftest import Pair

_TRACE = "7" * 32


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[TraceStore, str, str]]:
    store, token = TraceStore(max_spans=100), new_token()
    runner = web.AppRunner(create_otlp_app(store, token=token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield store, token, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _traced_call(pair: Pair) -> None:
    """One sampled call through both sidecars: each exports a span a linger later."""
    resp = await pair.call("/traced", {"traceparent": f"00-{_TRACE}-{'8' * 16}-01"})
    assert resp.status == 200


async def test_spans_sent_with_the_configured_token_are_stored(
        pair: Pair, receiver: tuple[TraceStore, str, str]) -> None:
    store, token, url = receiver
    await pair.configure(mesh={"otlp_endpoint": url,
                               "otlp_headers": {"authorization": f"Bearer {token}"}})
    await _traced_call(pair)
    async with asyncio.timeout(5):
        while len(store.trace(_TRACE) or []) < 2:  # noqa: ASYNC110 - spans come from processes
            await asyncio.sleep(0.02)
    assert {s.service for s in store.trace(_TRACE) or []} == {"front.shop", "leaf.shop"}


async def test_spans_sent_with_another_token_are_refused(
        pair: Pair, receiver: tuple[TraceStore, str, str]) -> None:
    store, _token, url = receiver
    await pair.configure(mesh={"otlp_endpoint": url,
                               "otlp_headers": {"authorization": "Bearer forged"}})
    await _traced_call(pair)
    async with asyncio.timeout(5):  # the exporter logs the refused batch on stderr
        while not any("answered 401" in line for line in pair.front.stderr):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert store.trace(_TRACE) is None
    assert not any("forged" in line for line in pair.front.stderr + pair.front.lines)


async def test_the_admin_config_dump_redacts_the_token(
        pair: Pair, receiver: tuple[TraceStore, str, str]) -> None:
    _store, token, url = receiver
    await pair.configure(mesh={"otlp_endpoint": url,
                               "otlp_headers": {"authorization": f"Bearer {token}"}})
    body = (await pair.front.admin_get("/config")).body.decode()
    assert token not in body
    assert json.loads(body)["mesh"]["otlp_headers"] == {"authorization": "[redacted]"}
    assert json.loads(body)["mesh"]["otlp_endpoint"] == url
