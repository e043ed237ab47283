"""Trace store of the local mesh: an OTLP/HTTP receiver and a Jaeger-style query API.

Sidecars and apps export spans with OTLP/HTTP (protobuf or JSON) to the receiver app;
probes read whole traces back through the query app in Jaeger's JSON shape, the same
API they use against a real cluster's Jaeger.
"""

from __future__ import annotations

from aiohttp import web

from localmesh.tracestore.jaeger import create_query_app
from localmesh.tracestore.model import Span, SpanEvent, TraceStore
from localmesh.tracestore.otlp import create_otlp_app

__all__ = ["Span", "SpanEvent", "TraceStore", "create_otlp_app", "create_query_app",
           "create_trace_apps"]


def create_trace_apps(store: TraceStore, *, otlp_token: str | None = None,
                      ) -> tuple[web.Application, web.Application]:
    """Return the (OTLP receiver, Jaeger query) applications over one store.

    ``otlp_token``: the bearer token every export must carry (the receiver is the only one
    that writes; the query API is read-only and open, as Jaeger's query is by default).
    """
    return create_otlp_app(store, token=otlp_token), create_query_app(store)
