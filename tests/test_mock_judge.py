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


def test_position_bias_adds_a_logit_for_essay_a() -> None:
    text = "one two three four five six seven eight"
    n = 4000
    wins = sum(
        judge(f"pb-{i}", text, text, temperature=0.1, position_bias=1.0).winner == Winner.ESSAY_A
        for i in range(n)
    )
    expected = 1 / (1 + math.exp(-1.0))  # equal essays: only the bias separates them
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_bundle_position_noise_grows_with_the_index_in_a_bundle() -> None:
    # A gap of 3 logits: the better essay wins 95% without noise, and about 72% with an SD
    # of 4 logits (the logistic-normal mean, computed by quadrature below).
    text_a = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    text_b = "alpha beta gamma delta epsilon zeta eta theta"
    temperature = (quality(text_a) - quality(text_b)) / 3.0
    n = 3000

    def rate(noise_sd: float) -> float:
        return (
            sum(
                judge(f"bn-{i}", text_a, text_b, temperature=temperature, noise_sd=noise_sd).winner
                == Winner.ESSAY_A
                for i in range(n)
            )
            / n
        )

    grid = [(k - 2000) / 250 for k in range(4001)]  # z from -8 to 8
    density = [math.exp(-z * z / 2) for z in grid]
    noisy = sum(d / (1 + math.exp(-(3.0 + 4.0 * z))) for d, z in zip(density, grid, strict=True))
    noisy /= sum(density)
    assert abs(rate(0.0) - 1 / (1 + math.exp(-3.0))) < 0.015
    assert abs(rate(4.0) - noisy) < 4 * math.sqrt(noisy * (1 - noisy) / n)


async def test_the_mock_provider_adds_noise_by_bundle_index() -> None:
    from lps_server.core.domain import Essay, Overrides
    from lps_server.providers.base import ComparisonItem, ItemSuccess
    from lps_server.providers.mock import MockProvider

    rich = " ".join(f"word{chr(97 + i)}x" for i in range(26))
    poor = "word word word"
    items = [
        ComparisonItem(f"k{i}", Essay("a", rich), Essay("b", poor), "judge") for i in range(64)
    ]
    plain = MockProvider(temperature=0.1)
    noisy = MockProvider(temperature=0.1, bundle_position_noise=2.0)
    first = await plain.compare(items, model="m", overrides=Overrides())
    second = await noisy.compare(items, model="m", overrides=Overrides())
    winners = [
        [o.judgement.winner for o in out if isinstance(o, ItemSuccess)] for out in (first, second)
    ]
    # A gap of 20 logits: without noise A always wins; item 0 has no noise either, while the
    # deep items' noise (SD up to 126 logits) flips some verdicts.
    assert winners[0] == [Winner.ESSAY_A] * 64
    assert winners[1][0] == Winner.ESSAY_A
    assert Winner.ESSAY_B in winners[1][32:]
    again = await MockProvider(temperature=0.1, bundle_position_noise=2.0).compare(
        items, model="m", overrides=Overrides()
    )
    assert [o.judgement.winner for o in again if isinstance(o, ItemSuccess)] == winners[1]


def test_mock_flaw_settings_are_read_and_checked() -> None:
    import pytest

    from lps_server.core.config import Settings
    from lps_server.core.errors import ConfigurationError

    settings = Settings.from_env(
        {"LPS_MOCK_POSITION_BIAS": "-0.5", "LPS_MOCK_BUNDLE_POSITION_NOISE": "0.25"}
    )
    assert (settings.mock_position_bias, settings.mock_bundle_position_noise) == (-0.5, 0.25)
    assert Settings.from_env({}).mock_position_bias == 0.0
    noise_range = r"LPS_MOCK_BUNDLE_POSITION_NOISE must be in 0\.\.20"
    with pytest.raises(ConfigurationError, match=noise_range):
        Settings.from_env({"LPS_MOCK_BUNDLE_POSITION_NOISE": "-1"})
    with pytest.raises(ConfigurationError, match="LPS_MOCK_POSITION_BIAS must be a finite number"):
        Settings.from_env({"LPS_MOCK_POSITION_BIAS": "nan"})
