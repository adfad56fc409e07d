"""Notebook and terminal reprs: `Run`, `Replay`, a run diff, `CheckReport` and `DriftReport`
render as the viewer's fragments (`_repr_html_`) and as rich renderables (`__rich__`), with
every recorded value escaped: the viewer's hostile HTML stays text, recorded markup and
terminal escapes print as text."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from tests.fixtures.hostile import HTML, RAW_TERMINAL, SCRIPT, SCRIPT_AND_IMG, TERMINAL

import replayable as rp
from replayable._drift._report import DriftChange, StepDrift
from replayable._rundiff import diff_runs
from replayable.store import Store, open_store
from replayable.trace import Run

HOSTILE = " ".join([*HTML, TERMINAL])
STATE = {"suffix": "", "fail": False}


@rp.boundary(kind="tool", name="nb_hostile:fetch")
def fetch(q: str) -> dict[str, str]:
    """Echoes its query (hostile text in, hostile text out)."""
    return {"text": q}


@rp.boundary(kind="agent", name="nb_hostile:agent")
def agent(q: str) -> dict[str, str]:
    """Fetches; fails with a hostile message, or changes its query, when told to."""
    if STATE["fail"]:
        raise RuntimeError(HOSTILE)
    return fetch(q + str(STATE["suffix"]))


@pytest.fixture
def hostile(store: Store) -> Run:
    """A run whose name, tags, input and output carry script tags and terminal escapes."""
    STATE.update(suffix="", fail=False)
    with rp.record(store, name=HOSTILE, tags={"t": HOSTILE}) as run:
        agent(HOSTILE)
    return run


def html_of(obj: Any) -> str:
    html = obj._repr_html_()
    assert isinstance(html, str)
    assert html.startswith('<div class="replayable-nb">')
    return html


def printed(obj: Any) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=300).print(obj)
    return out.getvalue()


def assert_inert_html(html: str) -> None:
    for raw in ("<script", "<img"):
        assert raw not in html


def assert_inert_terminal(text: str) -> None:
    for raw in RAW_TERMINAL:
        assert raw not in text


class TestHtml:
    def test_a_run_renders_its_tree_with_hostile_values_escaped(self, hostile: Run) -> None:
        """The run's header and step rows (names, previews) escape the viewer's payloads."""
        html = html_of(hostile)
        assert_inert_html(html)
        assert "&lt;script&gt;alert(" in html
        assert "fetch" in html
        assert 'href="/runs/' not in html  # no viewer links in a notebook

    def test_a_replay_renders_its_divergences_escaped(self, hostile: Run, store: Store) -> None:
        """A replay whose input changed shows the divergence's recorded and new values,
        escaped."""
        STATE["suffix"] = SCRIPT_AND_IMG
        try:
            with rp.replay(hostile.id, store=store, live=["fetch"], strict=False) as r:
                agent(HOSTILE)
        finally:
            STATE["suffix"] = ""
        assert r.divergences
        html = html_of(r)
        assert_inert_html(html)
        assert "changed" in html
        assert r.run.id in html

    def test_a_diff_renders_the_first_divergence_escaped(self, hostile: Run, store: Store) -> None:
        """The viewer's diff fragment, without links: the changed field's values escaped."""
        STATE["suffix"] = SCRIPT
        try:
            with rp.record(store, name="other") as other:
                agent(HOSTILE)
        finally:
            STATE["suffix"] = ""
        d = diff_runs(hostile, list(hostile.events()), other, list(other.events()))
        html = html_of(d)
        assert_inert_html(html)
        assert 'id="first-divergence"' in html
        assert "\\u003cscript\\u003e" in html or "&lt;script&gt;" in html

    def test_a_check_renders_groups_and_failures_escaped(self, hostile: Run, store: Store) -> None:
        """A check whose run now fails with a hostile message shows it escaped."""
        STATE["fail"] = True
        try:
            report = rp.check(store, imports=(), save=False)
        finally:
            STATE["fail"] = False
        assert report.counts["failed"] == 1
        html = html_of(report)
        assert_inert_html(html)
        assert "&lt;script&gt;alert(" in html

    def test_a_drift_report_renders_changes_escaped(self, hostile: Run) -> None:
        """Recorded and today's values of a drifted step are escaped."""
        step = StepDrift(
            run_id=hostile.id,
            seq=1,
            address="a",
            boundary="nb_hostile:fetch",
            step="fetch#1",
            status="drifted",
            changes=[DriftChange("text", SCRIPT, SCRIPT_AND_IMG)],
        )
        report = rp.DriftReport(runs=[hostile], steps=[step])
        html = html_of(report)
        assert_inert_html(html)
        assert "fetch#1" in html

    def test_a_run_without_a_store_shows_its_header(self) -> None:
        """A run not attached to a store renders its header and says it has no steps."""
        html = html_of(Run(id="r1", name=SCRIPT, status="ok"))
        assert_inert_html(html)
        assert "not attached to a store" in html


class TestRich:
    def test_every_report_prints_recorded_text_as_text(self, hostile: Run, store: Store) -> None:
        """Run, Replay, diff, CheckReport and DriftReport on a user's own rich console: no
        markup error, `[/bold]` printed as itself, no terminal escape reaching the terminal."""
        STATE["suffix"] = TERMINAL
        try:
            with rp.replay(hostile.id, store=store, live=["fetch"], strict=False) as r:
                agent(HOSTILE)
            STATE["fail"] = True
            check = rp.check(store, imports=(), save=False)
        finally:
            STATE.update(suffix="", fail=False)
        d = diff_runs(hostile, list(hostile.events()), r.run, list(r.run.events()))
        drift = rp.DriftReport(
            runs=[hostile],
            steps=[
                StepDrift(
                    hostile.id,
                    1,
                    "a",
                    "nb_hostile:fetch",
                    "fetch#1",
                    "drifted",
                    [DriftChange("text", TERMINAL, TERMINAL)],
                )
            ],
        )
        for obj in (hostile, r, d, check, drift):
            assert_inert_terminal(printed(obj))
        for obj in (hostile, check, drift):  # shown whole there: the markup is printed as is
            assert "[/bold] [red]x" in printed(obj)


def test_reprs_read_through_the_runs_store(store: Store, hostile: Run) -> None:
    """A run read back from a fresh store handle renders its steps too."""
    again = open_store(store.url).get_run(hostile.id)
    assert "fetch" in html_of(again)
