"""Six incident-shaped agents (Chronicle's published shapes) and the judge's labelled pairs.

Each module is one scenario: a model turn, a side-effect tool over a real SQLite world, a second
model turn reporting back; ``bench/bench_incidents.py`` runs Chronicle's incident protocol over
them (detection, specificity, five harmless tool-output changes each).
"""

from __future__ import annotations

from pathlib import Path

from bench.incidents import delete, email, invoice, payout, refund, trade

__all__ = ["MODULES", "PAIRS"]

MODULES = {m.SCENARIO.name: m for m in (refund, invoice, trade, email, payout, delete)}
"""Scenario name -> module, in Chronicle's table order."""

PAIRS = Path(__file__).with_name("judge_pairs.json")
"""The judge's labelled calibration pairs."""
