"""`lmaas tenant …` and `lmaas key …` work on the database directly."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lmaas.cli import app


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LMAAS_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_tenant_and_key_commands(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("tenant", "create", "acme", "--max-adapters", "3")
    assert "acme" in out and "lmaas key create acme" in out
    assert "already exists" in cli("tenant", "create", "acme", code=1)
    assert "invalid" in cli("tenant", "create", "Bad Name", code=1)
    cli("tenant", "update", "acme", "--tokens-per-minute", "1234")
    listing = cli("tenant", "list")
    assert "acme" in listing and "1234" in listing

    secret = cli("key", "create", "acme", "--name", "laptop").strip().splitlines()[-1]
    assert secret.startswith("sk-lmaas-")
    keys = cli("key", "list", "acme")
    assert "laptop" in keys and secret not in keys
    key_id = next(w for w in keys.split() if w.startswith("key-"))
    assert "revoked" in cli("key", "revoke", "acme", key_id)
    assert "no key" in cli("key", "revoke", "acme", "key-nope", code=1)
    assert "no tenant" in cli("key", "create", "ghost", code=1)

    cli("tenant", "delete", "acme", "--yes")
    assert "acme" not in cli("tenant", "list")
