"""The replayable pytest plugin, registered through the ``pytest11`` entry point.

- ``@pytest.mark.replay("tests/traces/incident-42.jsonl", live=[...], strict=True)`` replays the
  trace file around the test body: boundaries are served from it, agents run. The path is tried
  relative to the test file, then the rootdir, then the working directory. ``fallback=`` (a
  cassette, or its path relative to the test file) serves the calls the trace no longer matches.
- The ``replayable`` fixture: the active marker replay (``replayable.replay_session``), helpers
  bound to the test (``record()``, ``replay()``, ``cassette()``), and, used as a context manager,
  a cassette for this test under ``cassettes/`` next to the test file.
- ``--replayable-mode record|replay|auto|off`` forces cassette modes (``$REPLAYABLE_MODE`` still
  wins); ``--replayable-store URL`` is where the fixture and marker replays record.
- One summary line at the end: how many replays ran and how many diverged (xdist-aware).
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from replayable.cassette import MODES, Cassette, force_mode, resolve_mode
from replayable.context import AsyncToo
from replayable.record import Recording, record
from replayable.replay import Replay, replay
from replayable.store import Store, open_store

__all__ = ["ReplayableFixture"]

_ACTIVE = pytest.StashKey[Replay]()
_PROP = "replayable"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("replayable", "replayable: record and replay agent runs")
    group.addoption(
        "--replayable-mode",
        choices=MODES,
        default=None,
        help="Force every cassette into this mode ($REPLAYABLE_MODE still wins).",
    )
    group.addoption(
        "--replayable-store",
        default=None,
        help="Store URL or path where the replayable fixture and replay markers record.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "replay(path, live=(), strict=True, allow_side_effects=False, match='address', "
        "fallback=None): replay a replayable trace file around the test body; fallback: a "
        "cassette (or its path, beside the test) serving calls the trace no longer matches",
    )
    mode = config.getoption("replayable_mode", None)
    if mode:
        force_mode(mode)
    if not config.pluginmanager.has_plugin("replayable-summary"):
        config.pluginmanager.register(_Summary(), "replayable-summary")


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.getoption("replayable_mode", None):
        force_mode(None)


def _store(config: pytest.Config) -> Store | None:
    url = config.getoption("replayable_store", None)
    return open_store(url) if url else None


def _resolve(item: pytest.Item, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    for base in (item.path.parent, item.config.rootpath, Path.cwd()):
        if (base / p).is_file():
            return base / p
    pytest.fail(
        f"replay trace {os.fspath(path)!r} not found next to the test, in the rootdir or in "
        "the working directory",
        pytrace=False,
    )


def _note(item: pytest.Item, r: Replay) -> None:
    divs = [d.describe().splitlines()[0] for d in r.divergences]
    item.user_properties.append((_PROP, {"divergences": divs}))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    marker = item.get_closest_marker("replay")
    if marker is None:
        return (yield)
    if not marker.args:
        pytest.fail("@pytest.mark.replay needs a trace file path", pytrace=False)
    kwargs = dict(marker.kwargs)
    fallback = kwargs.pop("fallback", None)
    if isinstance(fallback, str | os.PathLike):
        # A path: the cassette beside the test (created by its first run, when it records).
        path = Path(fallback)
        fallback = Cassette(path if path.is_absolute() else item.path.parent / path, "auto")
    r = replay(
        _resolve(item, marker.args[0]),
        store=_store(item.config),
        live=tuple(kwargs.pop("live", ())),
        allow_side_effects=bool(kwargs.pop("allow_side_effects", False)),
        strict=bool(kwargs.pop("strict", True)),
        match=str(kwargs.pop("match", "address")),
        fallback=fallback,
    )
    if kwargs:
        pytest.fail(f"unknown @pytest.mark.replay options: {sorted(kwargs)}", pytrace=False)
    item.stash[_ACTIVE] = r
    try:
        with r:
            return (yield)
    finally:
        _note(item, r)


class ReplayableFixture(AsyncToo[Cassette]):
    """What the ``replayable`` fixture gives a test.

    >>> def test_agent(replayable):
    ...     with replayable:                 # a cassette for this test
    ...         assert support_agent(REQUEST)["status"] == "refused"
    """

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._cassette: Cassette | None = None
        self.replays: list[Replay] = []

    @property
    def replay_session(self) -> Replay | None:
        """The replay opened by ``@pytest.mark.replay`` around this test, if any."""
        return self._item.stash.get(_ACTIVE, None)

    @property
    def store(self) -> Store:
        """Where this test records: ``--replayable-store``, else the default store."""
        return _store(self._item.config) or open_store(None)

    @property
    def mode(self) -> str:
        """The cassette mode in force (``$REPLAYABLE_MODE``, ``--replayable-mode``, else auto)."""
        return resolve_mode("auto")

    @property
    def cassette_path(self) -> Path:
        """This test's default cassette: ``cassettes/<module>/<test>.jsonl`` beside the test."""
        name = re.sub(r"[^\w.-]+", "_", self._item.name).strip("_")
        return self._item.path.parent / "cassettes" / self._item.path.stem / f"{name}.jsonl"

    def record(
        self,
        *,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Recording:
        """``rp.record`` into the test's store, named after the test and tagged with its node id."""
        return record(
            self.store,
            name=name or self._item.name,
            tags={"test": self._item.nodeid, **dict(tags or {})},
            metadata=metadata,
        )

    def replay(self, source: Any, **kwargs: Any) -> Replay:
        """``rp.replay`` into the test's store; its divergences count in the session summary."""
        kwargs.setdefault("store", self.store)
        r = replay(source, **kwargs)
        self.replays.append(r)
        return r

    def cassette(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        mode: str = "auto",
        live: Iterable[str] = (),
    ) -> Cassette:
        """A cassette (default: this test's own file)."""
        return Cassette(path if path is not None else self.cassette_path, mode, live=live)

    def __enter__(self) -> Cassette:
        self._cassette = self.cassette()
        return self._cassette.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._cassette is not None
        self._cassette.__exit__(exc_type, exc, tb)
        self._cassette = None


@pytest.fixture
def replayable(request: pytest.FixtureRequest) -> Generator[ReplayableFixture, None, None]:
    """Record, replay and cassettes bound to this test; the active ``replay`` marker session."""
    fixture = ReplayableFixture(request.node)
    yield fixture
    for r in fixture.replays:
        if r.session.run.status != "running":
            _note(request.node, r)


class _Summary:
    """Counts replays and their divergences from test reports (on the xdist controller too)."""

    def __init__(self) -> None:
        self.replays = 0
        self.tests: set[str] = set()
        self.diverged: list[tuple[str, list[str]]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == _PROP and isinstance(value, dict):
                self.replays += 1
                self.tests.add(report.nodeid)
                divs = [str(d) for d in value.get("divergences") or ()]
                if divs:
                    self.diverged.append((report.nodeid, divs))

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if hasattr(config, "workerinput") or not self.replays:
            return
        n_div = sum(len(d) for _, d in self.diverged)
        terminalreporter.write_sep("-", "replayable")
        where = f" in {len(self.diverged)} of them" if self.diverged else ""
        terminalreporter.write_line(
            f"replayable: {self.replays} replay(s) in {len(self.tests)} test(s), "
            f"{n_div} divergence(s){where}"
        )
        for nodeid, divs in self.diverged:
            more = f" (+{len(divs) - 1} more)" if len(divs) > 1 else ""
            terminalreporter.write_line(f"  {nodeid}: {divs[0]}{more}")
