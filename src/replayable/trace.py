"""The data model of a recording: runs (:class:`Run`) and their events (:class:`Event`, and
:class:`StoredEvent`, an event read from a store whose JSON fields stay stored bytes until read).

This is the public home of three concepts, each in its own private module:

- the data model, in :mod:`replayable._model`;
- the hash chain over a run's events, its seal, signatures and verification
  (:func:`verify_run`), in :mod:`replayable._chain`;
- trace files (one run as JSONL: write, read, verify), in :mod:`replayable._tracefile`.

Every name in ``__all__`` imports from this module.
"""

from __future__ import annotations

from replayable._chain import (
    HASH_VERSION,
    SIGNING_KEY_ENV,
    Verification,
    chain_events,
    chain_hash,
    check_recording,
    checkpoint,
    content_bytes,
    event_content,
    event_hash,
    event_payload,
    genesis_hash,
    head_signature,
    link_hash,
    payload_digest,
    rechain,
    seal_hash,
    seal_run,
    sign_run,
    signing_key,
    verify_events,
    verify_run,
)
from replayable._exports import publish
from replayable._model import RUN_STATUSES, Event, Run, RunStatus, StoredEvent
from replayable._tracefile import (
    TRACE_FORMAT,
    TRACE_VERSION,
    check_run_id,
    check_trace,
    iter_trace,
    parse_trace,
    read_trace,
    read_trace_header,
    trace_lines,
    verify_trace,
    write_trace,
)

__all__ = [
    "HASH_VERSION",
    "RUN_STATUSES",
    "SIGNING_KEY_ENV",
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Event",
    "Run",
    "RunStatus",
    "StoredEvent",
    "Verification",
    "chain_events",
    "chain_hash",
    "check_recording",
    "check_run_id",
    "check_trace",
    "checkpoint",
    "content_bytes",
    "event_content",
    "event_hash",
    "event_payload",
    "genesis_hash",
    "head_signature",
    "iter_trace",
    "link_hash",
    "parse_trace",
    "payload_digest",
    "read_trace",
    "read_trace_header",
    "rechain",
    "seal_hash",
    "seal_run",
    "sign_run",
    "signing_key",
    "trace_lines",
    "verify_events",
    "verify_run",
    "verify_trace",
    "write_trace",
]

publish(globals())
