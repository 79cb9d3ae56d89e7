"""Server settings: defaults, the environment, and refusing an unsafe or broken setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.api.config import ServerSettings, is_loopback
from granary.errors import ConfigError


def test_defaults_and_env() -> None:
    assert ServerSettings.from_env({}) == ServerSettings()
    s = ServerSettings.from_env({"GRANARY_SERVER_PORT": "9000", "GRANARY_AUTH": "tokens",
                                 "GRANARY_SERVER_HOST": "0.0.0.0",
                                 "GRANARY_SERVER_CORS": "https://a.example, https://b.example"})
    assert (s.port, s.auth, s.host, s.cors_origins) == (9000, "tokens", "0.0.0.0", ("https://a.example",
                                                                                    "https://b.example"))
    assert ServerSettings.from_env({}, port=1234, host=None).port == 1234


def test_local_auth_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match="every caller would act as the local admin"):
        ServerSettings(host="0.0.0.0", auth="local")


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="both a TLS certificate and its key"):
        ServerSettings(tls_cert=cert)
    with pytest.raises(ConfigError, match="does not exist"):
        ServerSettings(tls_cert=cert, tls_key=tmp_path / "missing.pem")


def test_bad_values_say_which_variable() -> None:
    with pytest.raises(ConfigError, match="GRANARY_AUTH"):
        ServerSettings.from_env({"GRANARY_AUTH": "open"})
    with pytest.raises(ConfigError, match="GRANARY_SERVER_PORT must be an integer"):
        ServerSettings.from_env({"GRANARY_SERVER_PORT": "http"})
