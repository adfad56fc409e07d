"""A loopback HTTP service that answers with what it was sent and counts connections."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EchoServer:
    """``POST``/``GET`` anything: the reply is JSON with the method, path, query, body, the
    request's headers, and a counter of requests served so far (so a replay that reached the
    server shows). ``connections`` counts accepted sockets."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n).decode() if n else ""
                path, _, query = self.path.partition("?")
                seen = {k.lower(): v for k, v in self.headers.items()}
                with outer._lock:
                    outer.requests.append({"method": self.command, "path": path, "headers": seen})
                    count = len(outer.requests)
                out = json.dumps(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "body": body,
                        "count": count,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.send_header("x-served-by", "echo")
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> Any:
                conn = super().get_request()
                with outer._lock:
                    outer.connections += 1
                return conn

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
