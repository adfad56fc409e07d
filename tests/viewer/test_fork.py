"""The viewer's what-if links: "fork from here" on a step card, and a fork's way back."""

from __future__ import annotations

import contextlib

from starlette.testclient import TestClient

import replayable as rp
from replayable.demo import agent as demo
from replayable.viewer import create_app

from .conftest import Incident

LOCAL = "http://127.0.0.1"


def step_seq(incident: Incident, name: str) -> int:
    events = incident.store.iter_events(incident.run.id)
    return next(e.seq for e in events if e.boundary.endswith(":" + name))


class TestForkFromHere:
    def test_a_model_step_offers_the_fork_command(self, incident: Incident) -> None:
        """The step card carries `replayable fork RUN --import M --at choose_record#1 ...`."""
        client = TestClient(create_app(incident.store), base_url=LOCAL)
        seq = step_seq(incident, "choose_record")
        html = client.get(f"/runs/{incident.run.id}/steps/{seq}", params={"partial": "1"}).text
        expected = (
            f"replayable fork {incident.run.id} --import replayable.demo.agent "
            f"--at choose_record#1 --live-from --store {incident.store.url}"
        )
        assert f'value="{expected}"' in html
        assert 'data-copy="fork-cmd-' in html
        api = client.get(f"/api/runs/{incident.run.id}/steps/{seq}").json()
        assert api["fork_command"] == expected

    def test_the_agent_step_has_no_fork_command(self, incident: Incident) -> None:
        """A fork changes what a step returns; the agent around it has nothing to offer."""
        client = TestClient(create_app(incident.store), base_url=LOCAL)
        seq = step_seq(incident, "support_agent")
        html = client.get(f"/runs/{incident.run.id}/steps/{seq}").text
        assert "fork-cmd-" not in html


class TestForkRunPage:
    def test_a_fork_links_back_to_its_source_at_the_fork_point(self, incident: Incident) -> None:
        """The fork's run page: 'forked from RUN at choose_record#1', to the source's step."""
        pick = {"tool": "delete_record", "arguments": {"customer_id": 13}, "reason": "13"}
        demo.reset_db()
        with (
            contextlib.suppress(rp.Divergence),
            rp.replay(
                incident.run.id,
                store=incident.store,
                override={"choose_record#1": pick},
                strict=False,
            ) as fork,
        ):
            demo.support_agent(demo.REQUEST)
        from replayable._writer import stop_writer

        stop_writer(incident.store)
        client = TestClient(create_app(incident.store), base_url=LOCAL)
        html = client.get(f"/runs/{fork.run.id}").text
        seq = step_seq(incident, "choose_record")
        assert f'href="/runs/{incident.run.id}/steps/{seq}"' in html
        assert "at choose_record#1" in html
        plain = client.get(f"/runs/{incident.replay.id}").text
        assert 'id="fork-source"' not in plain

    def test_a_fork_lists_what_changed_with_links_to_its_steps(self, incident: Incident) -> None:
        """Overridden, faked and live steps link to the fork's own step pages."""
        pick = {"tool": "delete_record", "arguments": {"customer_id": 13}, "reason": "13"}
        demo.reset_db()
        with rp.replay(
            incident.run.id,
            store=incident.store,
            override={"choose_record#1": pick},
            fakes={"delete_record": lambda customer_id: {"deleted": 0}},
        ) as fork:
            demo.support_agent(demo.REQUEST)
        from replayable._writer import stop_writer

        stop_writer(incident.store)
        assert demo.customers() == [tuple(c) for c in demo.CUSTOMERS]
        html = TestClient(create_app(incident.store), base_url=LOCAL).get(f"/runs/{fork.run.id}")
        assert 'id="fork-changes"' in html.text
        seqs = {
            e.boundary.rsplit(":", 1)[-1]: e.seq for e in incident.store.iter_events(fork.run.id)
        }
        for how, name in (("overridden", "choose_record"), ("faked", "delete_record")):
            assert f'class="badge how-{how}"' in html.text
            assert f'href="/runs/{fork.run.id}/steps/{seqs[name]}">{name}#1</a>' in html.text
        assert "~ input.customer_id: 12 -&gt; 13" in html.text
