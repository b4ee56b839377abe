"""What the commands share: the console, logging setup, error exits, opening the database."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

__all__ = ["console", "err_console", "fail", "lmaas_command", "open_database", "setup_logging"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, *, hint: str | None = None) -> NoReturn:
    """Print an error (and how to fix it) and exit with status 1."""
    err_console.print(f"[bold red]error:[/] {message}")
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}")
    raise typer.Exit(1)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # httpx logs every request line at INFO: keep it for debugging only.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def lmaas_command() -> str:
    """How a user runs `lmaas` from here (for hints)."""
    found = shutil.which("lmaas")
    if found:
        return "lmaas"
    candidate = Path(sys.executable).parent / "lmaas"
    return str(candidate) if candidate.exists() else f"{sys.executable} -m lmaas"


def open_database():  # type: ignore[no-untyped-def]
    """The deployment's database (migrated), from the settings."""
    from lmaas.config import get_settings
    from lmaas.store import Database

    return Database(get_settings().resolved_database_url)
