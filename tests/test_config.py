"""The settings and the README's configuration table agree."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_setting_exactly() -> None:
    table = CliRunner().invoke(app, ["config-table"]).stdout.strip()
    text = README.read_text()
    section = re.search(r"<!-- config-table:start -->\n(.*?)<!-- config-table:end -->", text, re.S)
    assert section, "README.md lacks the config-table markers"
    assert section.group(1).strip() == table, "README table is stale: run `lmaas config-table`"


def test_defaults_live_under_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LMAAS_HOME", str(tmp_path))
    s = Settings()
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'lmaas.db'}"
    assert s.resolved_broker_url.startswith("sqla+sqlite:///")
    token = s.resolved_admin_token()
    assert token == Settings().resolved_admin_token(), "the generated admin token is kept"
    assert (tmp_path / "admin-token").stat().st_mode & 0o077 == 0
