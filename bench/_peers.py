"""The peers' setups, shared by several benchmarks: a loopback HTTP server, OTel, Chronicle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from bench import output_1kb

__all__ = ["chronicle_version", "loopback_server"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so httpx reuses one connection
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed ACK
    body = orjson.dumps(output_1kb())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def loopback_server() -> Iterator[str]:
    """A tiny JSON HTTP server on 127.0.0.1 (a free port); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-http", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def chronicle_version() -> str | None:
    """The installed ``agent-chronicle`` version, or None when it is not installed."""
    try:
        from importlib.metadata import version

        return version("agent-chronicle")
    except Exception:
        return None
