"""Lean HTTP/1.1 on asyncio protocols + httptools, for the sidecar data path and the chain."""

from localmesh.http.client import ClientConnection, ConnectionPool, ResponseCallback
from localmesh.http.errors import ConnectError, ConnectionTerminated, HttpError, HttpProtocolError
from localmesh.http.message import HOP_BY_HOP, Headers, Request, Response
from localmesh.http.server import FastHandler, Handler, ServerConnection, serve

__all__ = [
    "HOP_BY_HOP",
    "ClientConnection",
    "ConnectError",
    "ConnectionPool",
    "ConnectionTerminated",
    "FastHandler",
    "Handler",
    "Headers",
    "HttpError",
    "HttpProtocolError",
    "Request",
    "Response",
    "ResponseCallback",
    "ServerConnection",
    "serve",
]
