"""The statistics columns of `ranking.csv` and fields of `summary.json` (docs/cj.md, Outputs)."""

from __future__ import annotations

from typing import Any

from cj_client.stats.run_statistics import PositionBias, RunStatistics


def essay_fit_fields(statistics: RunStatistics | None, essay_id: str) -> dict[str, Any]:
    """`infit`, `outfit` (empty without judgements) and `flags` of one essay."""
    if statistics is None:
        return {"infit": None, "outfit": None, "flags": ""}
    fit = statistics.essays[essay_id]
    flags = [
        name
        for name, on in (("misfit", fit.misfit), ("anchor", essay_id in statistics.anchored))
        if on
    ]
    return {"infit": _round(fit.infit), "outfit": _round(fit.outfit), "flags": ";".join(flags)}


def statistics_fields(statistics: RunStatistics | None) -> dict[str, Any]:
    """Split-half reliability, position bias, misfits, anchors and judges for summary.json."""
    if statistics is None:
        return {}
    bias = statistics.position_bias
    return {
        "split_half_reliability": _round(statistics.split_half_reliability),
        "position_bias_logit": _round(bias.logit) if bias else None,
        "position_bias_se": _round(bias.se) if bias else None,
        "misfit_essays": sorted(e for e, fit in statistics.essays.items() if fit.misfit),
        "anchored_essays": len(statistics.anchored),
        "judges": [
            {
                "judge": judge.judge,
                "comparisons": judge.comparisons,
                "infit": _round(judge.infit),
                "outfit": _round(judge.outfit),
                "agreement_with_consensus": _round(judge.agreement),
                **_bias_fields(judge.position_bias),
            }
            for judge in statistics.judges
        ],
    }


def _bias_fields(bias: PositionBias | None) -> dict[str, float | None]:
    return {
        "position_bias_logit": _round(bias.logit) if bias else None,
        "position_bias_se": _round(bias.se) if bias else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
