"""Rate budgets of one HTTP provider: `LPS_<P>_REQUESTS_PER_MINUTE` and friends, per model table.

Vendors limit each model separately, so a budget is kept per provider and model: the provider's
settings are every model's budget, and `LPS_<P>_MODEL_BUDGETS` (inline JSON or a file path)
replaces them field by field for the models it names:

    {"gpt-4o": {"requests_per_minute": 500, "tokens_per_minute": 30000,
                "max_input_tokens_per_call": 20000}}

0 means "no budget of that kind" (the provider's rate-limit headers may still set one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from lps_server.core.errors import ConfigurationError
from lps_server.core.rates import RateBudget, RateCounts
from lps_server.providers.model_limits import context_tokens
from lps_server.providers.pricing import json_setting

# Table keys and the RateCounts field each one limits.
_PER_WINDOW = {
    "requests_per_minute": "requests",
    "tokens_per_minute": "tokens",
    "input_tokens_per_minute": "input_tokens",
    "output_tokens_per_minute": "output_tokens",
}
_PER_CALL = "max_input_tokens_per_call"


@dataclass(frozen=True, slots=True)
class ProviderBudgets:
    """A provider's budget for every model, and the models with budgets of their own.

    Attributes:
        default: the budget of a model the table does not name (from `LPS_<P>_*`).
        models: partial budgets by model name: the fields each entry sets.
    """

    default: RateBudget = field(default_factory=RateBudget)
    models: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def for_model(self, model: str) -> RateBudget:
        """The budget calls to `model` draw from, with the model's context when known."""
        budget = self.default
        entry = self.models.get(model, {})
        if entry:
            kinds = {_PER_WINDOW[k]: v for k, v in entry.items() if k in _PER_WINDOW}
            budget = replace(
                budget,
                limits=replace(budget.limits, **kinds),
                max_input_tokens=entry.get(_PER_CALL, budget.max_input_tokens),
            )
        return replace(budget, context_tokens=context_tokens(model))

    @classmethod
    def from_values(
        cls, prefix: str, *, limits: RateCounts, window_s: float, max_input: int, table: str
    ) -> ProviderBudgets:
        """The budgets from the provider's settings and its raw `MODEL_BUDGETS` setting.

        Raises:
            ConfigurationError: a value is negative or the table is malformed.
        """
        name = f"{prefix}MODEL_BUDGETS"
        if window_s <= 0:
            raise ConfigurationError(f"{prefix}RATE_LIMIT_WINDOW_SECONDS must be > 0")
        for kind, value in zip(_PER_WINDOW, limits.values(), strict=True):
            if value < 0:
                raise ConfigurationError(f"{prefix}{kind.upper()} must be >= 0 (0: no budget)")
        if max_input < 0:
            raise ConfigurationError(f"{prefix}MAX_INPUT_TOKENS_PER_CALL must be >= 0")
        models = {model: _entry(name, model, e) for model, e in json_setting(name, table).items()}
        return cls(RateBudget(limits, window_s, max_input), models)


def _entry(name: str, model: str, entry: object) -> dict[str, int]:
    where = f"{name}[{model!r}]"
    keys = (*_PER_WINDOW, _PER_CALL)
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be an object with some of {list(keys)}")
    if unknown := sorted(set(entry) - set(keys)):
        raise ConfigurationError(f"{where} has unknown keys {unknown}; known: {list(keys)}")
    for key, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{where}.{key} must be an integer >= 0")
    return dict(entry)
