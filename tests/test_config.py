"""Settings come from LPS_* variables, with defaults and clear errors."""

from __future__ import annotations

import pytest

from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode
from lps_server.core.errors import ConfigurationError


def test_defaults_need_no_configuration() -> None:
    settings = Settings.from_env({})
    assert (settings.grpc_port, settings.metrics_port, settings.queue_backend) == (
        50051,
        9464,
        "local",
    )
    assert settings.queue_processing_mode == ProcessingMode.PER_REQUEST
    assert settings.serial_bundle_max_requests_per_call == 8


def test_variables_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "LPS_QUEUE_PROCESSING_MODE": "serial_bundle",
            "LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL": "16",
            "LPS_AUTH_TOKENS": "a, b",
            "LPS_MOCK_ERROR_RATE": "0.25",
        }
    )
    assert settings.bundle_size == 16
    assert settings.auth_tokens == ("a", "b")
    assert "auth_tokens" not in repr(settings)  # tokens are secrets: never in logs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LPS_GRPC_PORT": "http"}, "LPS_GRPC_PORT='http' is invalid"),
        ({"LPS_SERIAL_BUNDLE_MAX_REQUESTS_PER_CALL": "65"}, "1..64"),
        ({"LPS_QUEUE_PROCESSING_MODE": "fast"}, "LPS_QUEUE_PROCESSING_MODE='fast' is invalid"),
        ({"LPS_QUEUE_BACKEND": "kafka"}, "local or redis"),
        ({"LPS_MOCK_ERROR_RATE": "2"}, "0..1"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Settings.from_env(env)
