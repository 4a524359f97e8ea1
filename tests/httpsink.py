"""A real HTTP server on 127.0.0.1 for receiver tests: records every request and answers
from a script (status codes, bodies, delays, or a function of the request).

    with HttpSink() as sink:                      # answers 200 {"errcode": 0, ...}
        sink.script = [(500, b"down"), (500, b"down")]   # then the default again
        ... sink.url, sink.requests, sink.wait_for(n)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OK_BODY = b'{"errcode": 0, "errmsg": "ok", "code": 0, "msg": "success"}'


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]   # lower-case names
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, bytes]


class HttpSink:
    def __init__(self, default: Answer = (200, OK_BODY)) -> None:
        self.default = default
        self.script: list[Answer] = []
        self.respond: Callable[[Recorded], Answer] | None = None
        self.delay_s = 0.0
        self.hold = threading.Event()      # while cleared and `holding`, requests block
        self.holding = False
        self.requests: list[Recorded] = []
        self._cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self._handle()

            def do_GET(self) -> None:  # noqa: N802
                self._handle()

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                parts = urlsplit(self.path)
                rec = Recorded(
                    method=self.command, path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body, at=time.monotonic())
                with sink._cond:
                    sink.requests.append(rec)
                    sink._cond.notify_all()
                if sink.holding:
                    sink.hold.wait(60)
                if sink.delay_s:
                    time.sleep(sink.delay_s)
                status, payload = sink._answer(rec)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, rec: Recorded) -> Answer:
        with self._cond:
            if self.script:
                return self.script.pop(0)
        if self.respond is not None:
            return self.respond(rec)
        return self.default

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} requests, got {len(self.requests)}")
                self._cond.wait(left)
            return list(self.requests)

    def start(self) -> HttpSink:
        self._thread.start()
        return self

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
