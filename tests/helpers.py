"""Small helpers shared by tests: submissions, metric reads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from cj_client import ComparisonSubmission, EssayInput

RICH = "A thorough essay weighs sleep research, bus schedules, sports and family routines."
POOR = "School is good. School is good. School is good."


def submission(i: int = 0, **kw: object) -> ComparisonSubmission:
    """A valid mock submission; keyword arguments override fields."""
    fields: dict[str, object] = {
        "essay_a": EssayInput(f"a{i}", f"{POOR} {i}"),
        "essay_b": EssayInput(f"b{i}", f"{RICH} {i}"),
        "request_id": f"req-{i}",
        "instructions": "Which essay argues better?",
    }
    fields.update(kw)
    return ComparisonSubmission(**fields)  # type: ignore[arg-type]


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
