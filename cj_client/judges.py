"""Who judges a run's comparisons: one judge or several (`--judge PROVIDER[:MODEL]`), in turn
(`RunRequests` gives comparison `k` to judge `k mod J`)."""

from __future__ import annotations

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


def judge_label(provider: str, model: str) -> str:
    """How a result's judge is named in the report: `provider:model` as the server resolved it."""
    return f"{provider}:{model}" if model else provider
