"""A real webhook receiver on 127.0.0.1 (or the address given), for the tests.

Paths: ``/ok`` (200), ``/flaky`` (500 twice, then 200), ``/dead`` (always 500),
``/gone`` (410), ``/hold`` (the first request is held open until ``release()``, later
ones get 200 at once). Every request is kept with its arrival time and headers.
``files`` are served to GET requests (image inputs named by URL).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.hits: dict[str, list[tuple[float, dict, bytes]]] = {}
        self.files: dict[str, bytes] = {}  # path -> body, for GET
        self.held = threading.Event()  # the first /hold request has arrived
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hits = outer.hits.setdefault(self.path, [])
                hits.append((time.monotonic(), dict(self.headers), body))
                if self.path == "/hold" and len(hits) == 1:
                    outer.held.set()
                    outer._release.wait(60)
                ok = self.path in {"/ok", "/hold"} or (self.path == "/flaky" and len(hits) >= 3)
                self.send_response(200 if ok else 410 if self.path == "/gone" else 500)
                self.end_headers()

            def do_GET(self) -> None:
                outer.hits.setdefault(self.path, []).append((time.monotonic(), {}, b""))
                body = outer.files.get(self.path.split("?", 1)[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
