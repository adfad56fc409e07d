"""Drift: model calls per second when ``rp.drift`` re-runs recorded OpenAI calls against a
loopback model server that takes 50 ms an answer (a fast hosted model), against the loop a user
would write today: the same recorded requests sent one after another with the same SDK client.

What is measured is the whole of ``rp.drift``: loading the runs from SQLite, re-running each
model call through the instrumented client (``--concurrency 8``), comparing the answers.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import Row, fresh_gc, now_ns, row

__all__ = ["run"]

LATENCY_S = 0.05
CONCURRENCY = 8


class _Model(BaseHTTPRequestHandler):
    """A chat-completions endpoint that answers after LATENCY_S."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        time.sleep(LATENCY_S)
        raw = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "m"),
                "system_fingerprint": "fp_bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "It ships on Monday."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def run(quick: bool = False) -> list[Row]:
    import openai

    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.integrations.openai import instrument
    from replayable.store.sqlite import SQLiteStore

    n = 16 if quick else 96
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    client = openai.OpenAI(base_url=url, api_key="sk-bench", max_retries=0)
    plain = openai.OpenAI(base_url=url, api_key="sk-bench", max_retries=0)
    instrument(client)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(Path(tmp) / "traces.db")
            ids = []
            requests = []
            for i in range(n):
                messages = [{"role": "user", "content": f"When does order {i} ship?"}]
                with rp.record(store, name="orders") as recorded:
                    client.chat.completions.create(model="gpt-4o", messages=messages)
                ids.append(recorded.id)
                requests.append(messages)
            stop_writer(store)

            fresh_gc()
            t0 = now_ns()
            report = rp.drift(ids, store=store, judge=None, concurrency=CONCURRENCY)
            ours = n / ((now_ns() - t0) / 1e9)
            assert len(report.steps) == n
            assert not report.not_rerun

            fresh_gc()
            t0 = now_ns()
            for messages in requests:
                plain.chat.completions.create(model="gpt-4o", messages=messages)
            peer = n / ((now_ns() - t0) / 1e9)
            store.close()
    finally:
        client.close()
        plain.close()
        httpd.shutdown()
        httpd.server_close()
    return [
        row(
            f"drift {n} recorded OpenAI calls, model answers in {LATENCY_S * 1000:.0f} ms, "
            f"--concurrency {CONCURRENCY}",
            ours,
            unit="calls/s",
            peer=peer,
            peer_name="the same requests one after another (openai SDK)",
            higher_is_better=True,
        )
    ]
