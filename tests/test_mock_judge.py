"""The mock judge: the distinct-word quality model, deterministic across processes."""

from __future__ import annotations

import math
import subprocess
import sys

from lps_server.core.domain import Winner
from lps_server.providers.mock import distinct_words, judge, quality

POOR = "good good good school school"
RICH = "Later starts let adolescents sleep longer, attend closely and arrive ready to learn."


def test_quality_counts_distinct_lowercased_words_split_on_non_letters() -> None:
    assert distinct_words("The cat, the CAT; the hat-trick 42 times!") == 5
    assert quality("a b c") == math.log1p(3)


def test_rich_essay_wins_at_low_temperature() -> None:
    verdicts = [judge(f"r{i}", POOR, RICH, temperature=0.1) for i in range(200)]
    assert all(v.winner == Winner.ESSAY_B for v in verdicts)
    assert all(v.confidence == 5 for v in verdicts)


def test_win_rate_follows_the_logistic_model() -> None:
    text_a = "one two three four five six seven eight nine ten"
    text_b = "one two three four five six seven eight"
    temperature = 0.5
    expected = 1 / (1 + math.exp(-(quality(text_a) - quality(text_b)) / temperature))
    n = 4000
    wins = sum(
        judge(f"id-{i}", text_a, text_b, temperature=temperature).winner == Winner.ESSAY_A
        for i in range(n)
    )
    standard_error = math.sqrt(expected * (1 - expected) / n)
    assert abs(wins / n - expected) < 4 * standard_error


def test_verdicts_are_identical_in_another_process() -> None:
    ids = [f"x{i}" for i in range(50)]
    here = [judge(i, "alpha beta gamma", "alpha beta delta", temperature=0.1).winner for i in ids]
    code = (
        "from lps_server.providers.mock import judge\n"
        f"ids = {ids!r}\n"
        "print(','.join(judge(i, 'alpha beta gamma', 'alpha beta delta', temperature=0.1)"
        ".winner.value for i in ids))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": "."},
    )
    assert out.stdout.strip().split(",") == [w.value for w in here]
    assert len(set(here)) == 2  # equal qualities: both outcomes occur, so the check has teeth
