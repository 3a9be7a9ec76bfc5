"""LLM providers: one interface that takes a list of comparisons and answers each one."""

from lps_server.providers.base import (
    ComparisonItem,
    ItemFailure,
    ItemOutcome,
    ItemSuccess,
    Provider,
    ProviderCallError,
)
from lps_server.providers.registry import ProviderRegistry

__all__ = [
    "ComparisonItem",
    "ItemFailure",
    "ItemOutcome",
    "ItemSuccess",
    "Provider",
    "ProviderCallError",
    "ProviderRegistry",
]
