"""The NER extra (``rp.PII(ner=True)``): names in free text found by spaCy's blank pipeline and
entity_ruler cue patterns, pseudonymized like listed names, idempotently, and replayed exactly;
everything else works without spaCy."""

from __future__ import annotations

import string
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
import replayable._pii as pii_module
from replayable._pii_ner import RULES, NameRecognizer
from replayable.store.sqlite import SQLiteStore

KEY = "ner-test-key-" + "n" * 32


@pytest.fixture(scope="module")
def recognizer() -> NameRecognizer:
    """One blank-pipeline recognizer (building one takes about a second)."""
    return NameRecognizer()


def found(r: NameRecognizer, text: str) -> list[str]:
    return [text[a:b] for a, b in r.find(text)]


class TestRecognizer:
    @pytest.mark.parametrize(
        ("text", "names"),
        [
            ("Please close my account. I'm Dana Whitfield, dana@x.io.", ["Dana Whitfield"]),
            ("I’m Dana Whitfield", ["Dana Whitfield"]),
            ("Hi, my name is José Álvarez López and I need help", ["José Álvarez López"]),
            ("Dear Mr. Smith, your order shipped.", ["Smith"]),
            ("Dr Jane Roe and Mrs. Ann Lee called", ["Jane Roe", "Ann Lee"]),
            ("Thanks for your patience.\nRegards,\nTom Baker", ["Tom Baker"]),
            ("spoke with Ana Lopez today", ["Ana Lopez"]),
            ("Ich bin Jürgen Müller.", ["Jürgen Müller"]),
            ("Sehr geehrte Frau Schmidt,", ["Schmidt"]),
            ("Je m'appelle Marie Curie", ["Marie Curie"]),
            ("Estimada Sra. García:", ["García"]),
            ("Mijn naam is Sanne de Vries", ["Sanne"]),
        ],
    )
    def test_names_after_a_cue_are_found(
        self, recognizer: NameRecognizer, text: str, names: list[str]
    ) -> None:
        """One to three capitalized words after a cue that introduces a person, in English,
        German, French, Spanish and Dutch; the cue and any title are left out of the span."""
        assert found(recognizer, text) == names

    @pytest.mark.parametrize(
        "text",
        [
            "Dear Customer, your refund is on its way.",
            "Hello World",
            "Contact Us for more",
            "The order 7 shipped to Lyon on Monday.",
            "dana whitfield wrote in lower case after i'm",
            "Thanks, the Support Team",
        ],
    )
    def test_text_without_a_named_person_is_left_alone(
        self, recognizer: NameRecognizer, text: str
    ) -> None:
        """No cue, a cue before a common word, or no capital: nothing is found."""
        assert found(recognizer, text) == []

    def test_a_long_text_is_read_in_windows(self, recognizer: NameRecognizer) -> None:
        """Text past spaCy's own length bound (a million characters) is read in windows, every
        name in it found, in bounded time."""
        unit = "I'm Dana Whitfield. " + "Nothing to see here at all. " * 20
        text = unit * (1_200_000 // len(unit))
        t0 = time.process_time()
        spans = recognizer.find(text)
        assert time.process_time() - t0 < 300
        assert len(spans) == text.count("I'm Dana Whitfield")
        assert {text[a:b] for a, b in spans} == {"Dana Whitfield"}

    def test_an_unknown_model_is_a_clear_error(self) -> None:
        """ner= naming a spaCy pipeline that is not installed says so and what to do."""
        with pytest.raises(rp.ReplayableError, match="no spaCy pipeline of that name"):
            NameRecognizer("xx_no_such_pipeline_sm")


class TestPseudonymized:
    def test_a_free_text_name_gets_the_listed_names_pseudonym(self) -> None:
        """With ner=True a name in free text is replaced by the same made-up name that listing
        it would give; without ner it stays (listed names and fields need no NER)."""
        text = "Customer says: I'm Dana Whitfield and I want a refund."
        with_ner = rp.PII(key=KEY, ner=True).pseudonymizer().text(text)
        listed = rp.PII(key=KEY, names=["Dana Whitfield"]).pseudonymizer().text(text)
        assert with_ner == listed
        assert "Whitfield" not in with_ner
        assert rp.PII(key=KEY).pseudonymizer().text(text) == text

    def test_bad_ner_values_are_refused(self) -> None:
        """ner= takes True or a pipeline name."""
        with pytest.raises(TypeError, match="ner="):
            rp.PII(ner="")
        with pytest.raises(TypeError, match="ner="):
            rp.PII(ner=3)  # type: ignore[arg-type]

    @settings(max_examples=60)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from(["I'm ", "Dear ", "Mr. ", "my name is ", "Regards,\n", "Hi "]),
                st.sampled_from(["Dana Whitfield", "Tom", "Ann Lee Roe", "Customer", "Lyon"]),
                st.text(string.ascii_letters + " ,.\n", max_size=15),
            ),
            max_size=10,
        )
    )
    def test_pseudonymizing_twice_changes_nothing(self, parts: list[str]) -> None:
        """Cues, names and noise in any order: the output pseudonymized again is unchanged
        (a made-up name after a cue is known for one), and the same key gives the same text."""
        p = rp.PII(key=KEY, ner=True).pseudonymizer()
        text = "".join(parts)
        once = p.text(text)
        assert p.text(once) == once
        assert rp.PII(key=KEY, ner=True).pseudonymizer().text(text) == once


@rp.boundary(kind="tool", name="ner_test:ticket")
def ticket(n: int) -> dict[str, str]:
    return {"body": f"Hello, I'm Dana Whitfield (ticket {n}). Regards,\nTom Baker"}


@rp.boundary(kind="agent", name="ner_test:agent")
def triage(n: int) -> str:
    body = ticket(n)["body"]
    return f"Dear {body.split('I' + chr(39) + 'm ')[1].split(' (')[0]}, we are on it."


class TestRecorded:
    def test_recorded_off_disk_and_replayed_exactly(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run recorded with ner=True holds no free-text name on disk, notes the recognizer
        in its settings, and replays with no divergence (the replay finds names the same way)."""
        store = SQLiteStore(tmp_path / "s.db")
        with rp.record(store, pii=rp.PII(key=KEY, ner=True)) as run:
            triage(7)
        rp.flush()
        for f in sorted(tmp_path.glob("s.db*")):
            data = f.read_bytes()
            for part in (b"Whitfield", b"Dana", b"Tom Baker"):
                assert part not in data, f"{f.name}: {part!r}"
        assert store.get_run(run.id).metadata["pii"]["ner"] == RULES
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        with rp.replay(run.id, store=store) as r:
            triage(7)
        assert r.divergences == []
        store.close()


class TestWithoutSpacy:
    def test_detection_works_and_ner_says_what_to_install(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With spaCy not importable, every other kind is found; ner=True is a clear error
        naming the extra."""
        monkeypatch.setitem(sys.modules, "spacy", None)
        pii_module._recognizer.cache_clear()
        try:
            p = rp.PII(key=KEY + "x", names=["Dana Whitfield"]).pseudonymizer()
            out = p.text("I'm Dana Whitfield, dana@acme.io")
            assert "Whitfield" not in out
            assert "acme.io" not in out
            with pytest.raises(rp.ReplayableError, match=r"replayable\[ner\]"):
                rp.PII(key=KEY + "y", ner=True).pseudonymizer()
        finally:
            pii_module._recognizer.cache_clear()


def saved_pipeline(path: Path) -> Path:
    """A real spaCy pipeline saved to disk whose entity_ruler knows one person (standing in for
    a trained model: it finds a name with no cue before it)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Zed Quillon"}])
    nlp.to_disk(path)
    return path


@rp.boundary(kind="tool", name="ner_test:note")
def note(text: str) -> str:
    return f"noted: {text}"


class TestInstalledPipeline:
    def test_a_pipelines_people_count_and_a_replay_loads_it_only_when_named(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ner= a pipeline (here saved to a path): its PERSON entities are pseudonymized; a
        replay refuses to load it from the run's settings alone, and replays exactly once the
        caller names it ($REPLAYABLE_PII_NER)."""
        pipe = str(saved_pipeline(tmp_path / "pipe"))
        store = SQLiteStore(tmp_path / "s.db")
        with rp.record(store, pii=rp.PII(key=KEY, ner=pipe)) as run:
            note("Zed Quillon called twice")
        rp.flush()
        assert b"Quillon" not in (tmp_path / "s.db-wal").read_bytes()
        assert store.get_run(run.id).metadata["pii"]["ner"] == pipe
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        with (
            pytest.raises(rp.ReplayableError, match="REPLAYABLE_PII_NER"),
            rp.replay(run.id, store=store),
        ):
            pass
        monkeypatch.setenv("REPLAYABLE_PII_NER", pipe)
        with rp.replay(run.id, store=store) as r:
            note("Zed Quillon called twice")
        assert r.divergences == []
        store.close()

    def test_a_forged_setting_never_imports_what_it_names(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A trace file whose settings were edited (and re-chained) to name a module as the
        pipeline: the replay stops with a clear error and the module is never imported."""
        from replayable.trace import chain_events, write_trace

        store = SQLiteStore(tmp_path / "s.db")
        with rp.record(store, pii=rp.PII(key=KEY, ner=True)) as run:
            note("hello")
        forged, events = store.get_run(run.id), list(store.iter_events(run.id))
        forged.metadata["pii"]["ner"] = "ner_forged_payload"
        chain_events(forged, events)
        trace = write_trace(forged, events, tmp_path / "forged.jsonl")
        marker = tmp_path / "imported"
        (tmp_path / "ner_forged_payload.py").write_text(
            f"open({str(marker)!r}, 'w').write('ran')\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        with (
            pytest.raises(rp.ReplayableError, match="cannot choose code to import"),
            rp.replay(trace),
        ):
            pass
        assert not marker.exists()
        assert "ner_forged_payload" not in sys.modules
        store.close()
