"""``rp.check(executor="dask")`` on a real Dask cluster (a scheduler and a ``dask worker`` with
two worker processes, all on 127.0.0.1), against PostgreSQL and against shipped trace files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.fixtures.check_corpus import record_corpus

import replayable
import replayable as rp
from replayable._check import load_check
from replayable.store import open_store
from replayable.trace import write_trace


@dataclass
class Cluster:
    """A running Dask cluster and the directory its workers import agent code from."""

    address: str
    code: Path


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text(encoding="utf-8").strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {proc.poll()})")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`dask scheduler` and `dask worker --nworkers 2`, bound to 127.0.0.1 on free ports."""
    base = tmp_path_factory.mktemp("dask")
    code = base / "code"
    code.mkdir()
    src = Path(replayable.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(code)])}
    dask = [sys.executable, "-m", "dask"]
    info = base / "scheduler.json"
    logs = (base / "scheduler.log").open("wb")
    worker_logs = (base / "worker.log").open("wb")
    scheduler = subprocess.Popen(
        [
            *dask,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(info),
        ],
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(info, scheduler, "the Dask scheduler")
        address = json.loads(info.read_text(encoding="utf-8"))["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen(
            [
                *dask,
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--dashboard-address",
                "127.0.0.1:0",
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            env=env,
            stdout=worker_logs,
            stderr=subprocess.STDOUT,
            cwd=base,
        )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield Cluster(address, code)
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        logs.close()
        worker_logs.close()


def _sorted(report: rp.CheckReport) -> list[tuple[str, str, str | None]]:
    return [(o.run_id, o.outcome, o.signature) for o in report.outcomes]


def test_a_dask_cluster_checks_a_postgres_store_like_the_local_executor(
    cluster: Cluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same runs, outcomes and groups as local processes; the check and the diverged
    runs' replays are kept in the shared PostgreSQL store."""
    monkeypatch.syspath_prepend(str(cluster.code))
    store = open_store(pg_url)
    corpus = record_corpus(store, cluster.code, n=24)
    corpus.change()
    local = rp.check(store, imports=[corpus.name], jobs=2, save=False)
    on_dask = rp.check(store, imports=[corpus.name], executor="dask", address=cluster.address)
    assert local.counts["diverged"] == len(corpus.refunds_over(100)) > 0
    assert _sorted(on_dask) == _sorted(local)
    assert [(g.signature, g.count) for g in on_dask.groups] == [
        (g.signature, g.count) for g in local.groups
    ]
    kept = load_check(on_dask.id, store)
    assert _sorted(kept) == _sorted(on_dask)
    for o in on_dask.runs("diverged"):
        assert store.get_run(str(o.replay_id)).parent_run == o.run_id


def test_trace_files_are_shipped_to_the_workers(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory of trace files the workers cannot see: the files travel with the tasks,
    a damaged one is not replayable, and the result matches the local executor."""
    monkeypatch.syspath_prepend(str(cluster.code))
    corpus = record_corpus(open_store(tmp_path / "traces.db"), cluster.code, n=12)
    corpus_dir = tmp_path / "corpus"
    for run in corpus.runs:
        write_trace(run, corpus.recorded(run), corpus_dir / f"{run.id}.jsonl")
    damaged = corpus_dir / f"{corpus.runs[0].id}.jsonl"
    damaged.write_text(damaged.read_text(encoding="utf-8")[:-30] + "\n", encoding="utf-8")
    corpus.change()
    local = rp.check(corpus_dir, imports=[corpus.name], save=False)
    on_dask = rp.check(
        corpus_dir, imports=[corpus.name], executor="dask", address=cluster.address, save=False
    )
    assert _sorted(on_dask) == _sorted(local)
    [bad] = on_dask.runs("not_replayable")
    assert bad.run_id == corpus.runs[0].id


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path: Path) -> None:
    """A scheduler address nothing listens on: ReplayableError naming it."""
    import socket

    code = tmp_path / "code"
    code.mkdir()
    sys.path.insert(0, str(code))
    try:
        corpus = record_corpus(open_store(tmp_path / "traces.db"), code, n=2)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(rp.ReplayableError, match="cannot reach the Dask scheduler"):
            rp.check(
                corpus.store,
                imports=[corpus.name],
                executor="dask",
                address=f"tcp://127.0.0.1:{port}",
            )
    finally:
        sys.path.remove(str(code))
