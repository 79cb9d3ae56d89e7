"""`granary server`: its help, and refusing an unsafe setup before listening."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from granary.cli.main import app

pytest.importorskip("fastapi", reason="granary server needs granary[server]")


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["server", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--auth", "--tls-cert", "--cors", "--root-path"):
        assert option in result.output


def test_local_auth_on_a_public_address_is_refused() -> None:
    result = CliRunner().invoke(app, ["server", "--host", "0.0.0.0", "--auth", "local"])
    assert result.exit_code == 1
    assert "every caller would act as the local admin" in result.output
