"""Who judges a run's comparisons: one judge or several (`--judge PROVIDER[:MODEL]`), in turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cj_client.models import PROVIDER_NAMES


@dataclass(frozen=True, slots=True)
class Judge:
    """A provider and model (empty: the provider's default) that judges comparisons."""

    provider: str
    model: str = ""

    @classmethod
    def parse(cls, spec: str) -> Judge:
        """`PROVIDER` or `PROVIDER:MODEL`.

        Raises:
            ValueError: the provider is not one of PROVIDER_NAMES, or the spec is empty.
        """
        provider, _, model = spec.strip().partition(":")
        if provider not in PROVIDER_NAMES:
            choices = ", ".join(PROVIDER_NAMES)
            raise ValueError(f"judge {spec!r}: provider must be one of {choices}")
        return cls(provider, model.strip())


class JudgeRota:
    """Hands out judges in turn, so each takes an equal share of the comparisons (within one)."""

    def __init__(self, judges: Sequence[Judge]) -> None:
        if not judges:
            raise ValueError("a run needs at least one judge")
        self._judges = tuple(judges)
        self._next = 0

    def take(self) -> Judge:
        """The judge of the next comparison."""
        judge = self._judges[self._next % len(self._judges)]
        self._next += 1
        return judge


def judge_label(provider: str, model: str) -> str:
    """How a result's judge is named in the report: `provider:model` as the server resolved it."""
    return f"{provider}:{model}" if model else provider
