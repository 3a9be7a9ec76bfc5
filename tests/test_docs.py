"""Every setting and metric the docs name exists in the code, so the docs cannot drift silently."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from lps_server.core.config import Settings
from lps_server.providers.http_settings import PREFIXES

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [p for pkg in ("lps_server", "cj_client") for p in (ROOT / pkg).rglob("*.py")]
SETTING = re.compile(r"\b(?:LPS|CJ)_[A-Z][A-Z0-9_]*[A-Z0-9]\b")
METRIC = re.compile(r"\b(?:llm_provider|cj_llm)_[a-z_]+[a-z]\b")
# Recorded series (deploy/prometheus/lps.rules.yml) are named level:metric:operations.
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
RULES = ROOT / "deploy" / "prometheus" / "lps.rules.yml"
SUFFIXES = ("_bucket", "_sum", "_count")


def code_text() -> str:
    return "\n".join(p.read_text() for p in SOURCES)


def settings_in_code() -> set[str]:
    from_fields = {f"LPS_{f.name.upper()}" for f in fields(Settings)}
    # Provider settings are read as PREFIX + NAME (LPS_OPENAI_ + "API_KEY"): combine the two.
    http = (ROOT / "lps_server" / "providers" / "http_settings.py").read_text()
    names = set(re.findall(r'"([A-Z][A-Z_]*[A-Z])"', http)) | set(
        re.findall(r"\{prefix\}([A-Z][A-Z_]*[A-Z])", http)
    )
    per_provider = {prefix + name for prefix in PREFIXES.values() for name in names}
    return from_fields | per_provider | set(SETTING.findall(code_text()))


def metrics_in_code() -> set[str]:
    text = code_text()
    return set(re.findall(r'"((?:llm_provider|cj_llm)_[a-z_]+)"', text))


def named_in_docs(pattern: re.Pattern[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        text = doc.read_text()
        if pattern is not RECORDED:
            text = RECORDED.sub("", text)  # a recorded series' middle part is not a metric
        for name in pattern.findall(text):
            found.setdefault(name, []).append(doc.name)
    return found


def test_docs_name_only_shipped_recording_rules() -> None:
    shipped = set(re.findall(r"record: (\S+)", RULES.read_text()))
    assert "lps:llm_provider_requests_failed:ratio_rate5m" in shipped  # the scan itself works
    unknown = {n: d for n, d in named_in_docs(RECORDED).items() if n not in shipped}
    assert not unknown, f"recorded series named in docs but not shipped: {unknown}"


def test_docs_name_only_real_settings() -> None:
    known = settings_in_code()
    unknown = {n: d for n, d in named_in_docs(SETTING).items() if n not in known}
    assert not unknown, f"settings named in docs but absent from the code: {unknown}"


def test_docs_name_only_real_metrics() -> None:
    known = metrics_in_code()
    assert "llm_provider_serial_bundle_calls_total" in known  # the scan itself works

    def base(name: str) -> str:
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in known:
                return name.removesuffix(suffix)
        return name

    unknown = {n: d for n, d in named_in_docs(METRIC).items() if base(n) not in known}
    assert not unknown, f"metrics named in docs but absent from the code: {unknown}"


def test_every_fixed_metric_name_is_defined() -> None:
    fixed = {
        "llm_provider_serial_bundle_calls_total",
        "llm_provider_serial_bundle_items_per_call",
        "llm_provider_queue_expiry_total",
        "llm_provider_queue_expiry_age_seconds",
        "cj_llm_requests_total",
        "cj_llm_batches_started_total",
    }
    assert fixed <= metrics_in_code()


def promql_in(doc: Path) -> list[str]:
    """The queries of a document's ```promql blocks: a line at the block's indentation starts a
    query, deeper-indented lines continue it, `#` lines are comments."""
    queries: list[str] = []
    for block in re.findall(r"^( *)```promql\n(.*?)^ *```", doc.read_text(), re.M | re.S):
        indent, body = len(block[0]), block[1]
        for line in body.splitlines():
            text = line[indent:]
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if text.startswith(" ") and queries:
                queries[-1] += " " + text.strip()
            else:
                queries.append(text.strip())
    return queries


def test_the_runbook_shows_every_shipped_alert_with_its_own_expression() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    runbook = ROOT / "docs" / "runbook.md"
    shown = {" ".join(q.split()) for q in promql_in(runbook)}
    assert len(alerts) == 6
    for name, expr in alerts.items():
        assert f"`{name}`" in runbook.read_text(), name
        assert " ".join(expr.split()) in shown, f"{name}: {expr}"
