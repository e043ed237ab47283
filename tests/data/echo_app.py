"""A tiny app for supervisor tests: serves its environment and logs each request.

GET /healthz   200 once READY_AFTER_S (env, default 0) seconds have passed since start
GET /env       the process environment as JSON
GET /unhealthy /healthy   make /healthz answer 503 / 200 from now on
GET /anything  200 "hello from <POD_NAME>"
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
READY_AFTER_S = float(os.environ.get("READY_AFTER_S", "0"))
HEALTH = {"ok": True}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            ok = time.monotonic() - STARTED >= READY_AFTER_S and HEALTH["ok"]
            self._send(200 if ok else 503, b"ok" if ok else b"warming up")
            return
        if self.path in ("/unhealthy", "/healthy"):
            HEALTH["ok"] = self.path == "/healthy"
            self._send(200, b"ok")
            return
        if self.path == "/env":
            self._send(200, json.dumps(dict(os.environ)).encode(), "application/json")
            return
        print(f"echo-app handled GET {self.path}", flush=True)
        self._send(200, f"hello from {os.environ.get('POD_NAME')}\n".encode())

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"echo-app listening on 127.0.0.1:{port} as {os.environ.get('POD_NAME')}", flush=True)
    print("echo-app stderr line", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
