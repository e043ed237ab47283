"""A caller with a side hop, as Bookinfo's reviews calls ratings: each GET calls
``http://ratings:8080/ratings`` through the pod's sidecar (HTTP_PROXY), forwarding the
``end-user`` header, and answers 200 with what the side call did, so a test can measure it:

GET /healthz  200
GET /page     200 {"ratings_status": <code, or 0 if the call failed>, "ratings_ms": <float>,
              "ratings_body": <text>, "fallback": <true when ratings was not a 200>}
"""

import json
import os
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIDE_URL = os.environ.get("SIDE_URL", "http://ratings:8080/ratings")
SIDE_TIMEOUT_S = float(os.environ.get("SIDE_TIMEOUT_S", "5"))


def call_side(user: str | None) -> tuple[int, str, float]:
    headers = {"end-user": user} if user else {}
    start = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(SIDE_URL, headers=headers),
                                    timeout=SIDE_TIMEOUT_S) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError as exc:
        status, body = 0, str(exc)
    return status, body, (time.monotonic() - start) * 1000


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok")
            return
        status, body, ms = call_side(self.headers.get("end-user"))
        page = {"ratings_status": status, "ratings_ms": ms, "ratings_body": body,
                "fallback": status != 200}
        self._send(200, json.dumps(page).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
