"""Judges: verdicts with score and reason; an LLM judge that replays free; an offline judge."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

import replayable as rp
import replayable.testing as rt


class _Model:
    """What the loopback model server answers, and what it was asked."""

    def __init__(self) -> None:
        self.reply = '{"score": 0.9, "reason": "same refund amount"}'
        self.requests: list[dict[str, Any]] = []


@pytest.fixture
def model() -> Iterator[tuple[_Model, str]]:
    """A tiny OpenAI-compatible chat completions server on 127.0.0.1."""
    state = _Model()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            payload = json.dumps(
                {
                    "id": f"chatcmpl-{len(state.requests)}",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": state.reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def llm_judge(model: tuple[_Model, str]) -> Iterator[rt.LLMJudge]:
    client = openai.OpenAI(base_url=model[1], api_key="sk-test-not-a-secret", max_retries=0)
    yield rt.LLMJudge(client, model="judge-1", threshold=0.7)
    client.close()


ANSWER = "We refunded 40 dollars to your credit card."
REFERENCE = "The refund of $40 was issued to your card."


class TestLLMJudge:
    def test_verdict_carries_score_and_reason(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str]
    ) -> None:
        """The model's JSON becomes a passing verdict; the request carries both texts."""
        verdict = rt.judge(ANSWER, REFERENCE, criteria="same refund amount", using=llm_judge)
        assert verdict
        assert (verdict.score, verdict.reason) == (0.9, "same refund amount")
        sent = model[0].requests[0]
        assert sent["model"] == "judge-1"
        assert sent["temperature"] == 0
        assert ANSWER in sent["messages"][1]["content"]
        assert REFERENCE in sent["messages"][1]["content"]

    def test_failed_assertion_shows_both_texts(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str]
    ) -> None:
        """A low score raises JudgeFailed (an AssertionError) with candidate and reference."""
        model[0].reply = '{"score": 0.2, "reason": "different amount"}'
        with pytest.raises(AssertionError) as info:
            rt.assert_judged("We refunded 400 dollars.", REFERENCE, using=llm_judge)
        text = str(info.value)
        assert "failed with score 0.200: different amount" in text
        assert "We refunded 400 dollars." in text
        assert REFERENCE in text
        assert isinstance(info.value, rt.JudgeFailed)

    def test_judgement_recorded_then_replayed_without_the_model(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str]
    ) -> None:
        """The judge's call is a boundary: replaying a judged run costs no request."""
        with rp.record(name="judged") as run:
            first = rt.judge(ANSWER, REFERENCE, using=llm_judge)
        assert len(model[0].requests) == 1
        with rp.replay(run) as r:
            again = rt.judge(ANSWER, REFERENCE, using=llm_judge)
        assert r.ok
        assert again == first
        assert len(model[0].requests) == 1

    def test_judgement_in_a_cassette_is_served_on_the_second_run(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str], tmp_path: Path
    ) -> None:
        """In a cassette, the first judged run records, the next replays from the file."""
        tape = tmp_path / "judge.jsonl"
        with rp.cassette(tape):
            rt.judge(ANSWER, REFERENCE, using=llm_judge)
        with rp.cassette(tape, mode="replay") as c:
            assert rt.judge(ANSWER, REFERENCE, using=llm_judge).score == 0.9
        assert (c.hits, len(model[0].requests)) == (1, 1)
        assert "sk-test-not-a-secret" not in tape.read_text()

    @pytest.mark.parametrize(
        ("reply", "score"),
        [("Score: 0.8 - close enough", 0.8), ('```json\n{"score": 1, "reason": "ok"}\n```', 1.0)],
    )
    def test_lenient_parsing_of_the_model_reply(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str], reply: str, score: float
    ) -> None:
        """A bare number or fenced JSON still yields a score."""
        model[0].reply = reply
        assert rt.judge(ANSWER, REFERENCE, using=llm_judge).score == score

    def test_reply_without_score_is_an_error(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str]
    ) -> None:
        """A reply with no score is a clear error, not a silent pass."""
        model[0].reply = "I cannot grade this."
        with pytest.raises(rp.ReplayableError, match="did not return a score"):
            rt.judge(ANSWER, REFERENCE, using=llm_judge)


@pytest.fixture(scope="module")
def embedding() -> rt.EmbeddingJudge:
    return rt.EmbeddingJudge()


class TestEmbeddingJudge:
    def test_paraphrase_passes_at_the_documented_threshold(
        self, embedding: rt.EmbeddingJudge
    ) -> None:
        """Paraphrases score above EMBEDDING_THRESHOLD, offline."""
        verdict = embedding.judge(ANSWER, REFERENCE)
        assert verdict.passed
        assert verdict.score > rt.EMBEDDING_THRESHOLD
        assert "threshold 0.6" in verdict.reason

    def test_unrelated_answer_fails_with_both_texts(self, embedding: rt.EmbeddingJudge) -> None:
        """An off-topic answer scores low and its message shows both texts."""
        verdict = embedding.judge("Your order has shipped and will arrive Friday.", REFERENCE)
        assert not verdict.passed
        assert verdict.score < 0.4
        with pytest.raises(rt.JudgeFailed, match="will arrive Friday"):
            verdict.check()

    def test_is_the_default_judge(self, embedding: rt.EmbeddingJudge) -> None:
        """judge() without `using` is the embedding judge; set_default_judge replaces it."""
        assert rt.judge(ANSWER, REFERENCE).judge.startswith("EmbeddingJudge")
        rt.set_default_judge(rt.EmbeddingJudge(threshold=0.99))
        try:
            assert not rt.judge(ANSWER, REFERENCE)
        finally:
            rt.set_default_judge(None)


APPROVED = "I couldn't issue that refund: $9,847,261.00 is more than the order total of $47.00."
INCIDENT = "Done. Refunded $9,847,261.00 to order #9847261."


class TestContrastiveJudge:
    def test_the_incident_reply_passes_alone_and_fails_contrastively(
        self, embedding: rt.EmbeddingJudge
    ) -> None:
        """The issue's case: alone the incident scores above threshold; with incident= it fails."""
        assert embedding.judge(INCIDENT, APPROVED).passed
        verdict = embedding.judge(INCIDENT, APPROVED, incident=INCIDENT)
        assert not verdict.passed
        assert "does not state the reference's outcome (not done)" in verdict.reason
        assert "incident (must not be repeated):" in verdict.message()

    def test_a_harmless_reword_of_the_fix_passes(self, embedding: rt.EmbeddingJudge) -> None:
        """'policy check failed' fails the plain threshold but passes contrastively."""
        reword = "Refund blocked: policy check failed."
        assert not embedding.judge(reword, APPROVED).passed
        verdict = rt.judge(reword, APPROVED, incident=INCIDENT, using=embedding)
        assert verdict.passed, verdict.message()
        assert verdict.judge == "EmbeddingJudge(all-MiniLM-L6-v2, contrastive)"

    def test_yes_is_not_no(self, embedding: rt.EmbeddingJudge) -> None:
        """Polarity: 'Yes.' against the approved 'No.' fails, a reworded no passes."""
        assert not embedding.judge("Yes.", "No.", incident="Yes.").passed
        assert embedding.judge("No, it was not done.", "No.", incident="Yes.").passed

    def test_a_fact_only_the_incident_stated_fails(self, embedding: rt.EmbeddingJudge) -> None:
        """When both outcomes are 'done', the incident's own amount gives it away."""
        approved = "Done. Refunded $47.00 to order #9847261 for the double charge."
        assert embedding.judge(
            "Refund of $47.00 issued for order #9847261.", approved, incident=INCIDENT
        )
        verdict = embedding.judge(
            "All set: $9,847,261.00 has been refunded to order #9847261.",
            approved,
            incident=INCIDENT,
        )
        assert not verdict.passed
        assert "repeats the incident's 9847261.00" in verdict.reason

    def test_off_topic_answers_fail(self, embedding: rt.EmbeddingJudge) -> None:
        """Nonsense and non-answers fail even when they share the reference's polarity."""
        verdict = embedding.judge("Sorry, bananas are not blue.", APPROVED, incident=INCIDENT)
        assert not verdict.passed
        assert "off topic" in verdict.reason

    def test_assert_judged_takes_the_incident(self, embedding: rt.EmbeddingJudge) -> None:
        """assert_judged(..., incident=) raises JudgeFailed on the incident's own answer."""
        with pytest.raises(rt.JudgeFailed, match="contrastive"):
            rt.assert_judged(INCIDENT, APPROVED, incident=INCIDENT, using=embedding)

    def test_llm_judge_is_shown_the_incident(
        self, llm_judge: rt.LLMJudge, model: tuple[_Model, str]
    ) -> None:
        """The LLM judge's request carries the incident answer as the one not to repeat."""
        rt.judge(ANSWER, REFERENCE, incident="We refunded 9,847,261 dollars.", using=llm_judge)
        content = model[0].requests[0]["messages"][1]["content"]
        assert "Incident answer (wrong, must not recur):\nWe refunded 9,847,261 dollars." in content

    def test_a_judge_without_incident_keyword_still_works(self) -> None:
        """A user judge written to the old protocol is called without incident=."""

        class Exact:
            def judge(
                self, candidate: str, reference: str, criteria: str | None = None
            ) -> rt.Verdict:
                return rt.Verdict(candidate == reference, 1.0, "exact", candidate, reference)

        assert rt.judge("a", "a", using=Exact())


class TestCalibration:
    def test_labelled_set_precision_and_recall(self, embedding: rt.EmbeddingJudge) -> None:
        """On the held-out labelled pairs the contrastive judge passes no negative and at least
        90% of positives, and no group's incident reply; the plain threshold does far worse."""
        from bench.incidents._judging import evaluate

        scores = evaluate(embedding, split="held-out")
        assert scores["pairs"] >= 30
        assert scores["contrastive"]["precision"] == 1.0
        assert scores["contrastive"]["recall"] >= 0.9
        assert scores["plain"]["precision"] < 0.8
        assert not any(scores["incident_replies_passed"])
        assert evaluate(embedding, split="calibration")["pairs"] >= 100
