"""The `lmaas` command: run the platform's processes and administer it.

Commands import what they need when they run, so `lmaas --help` stays fast.
"""

from __future__ import annotations

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="lmaas",
    help="Multi-tenant LLM-as-a-service: run the platform, administer tenants, plan GPUs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """lmaas: multi-tenant LLM-as-a-service."""


@app.command("config-table")
def config_table() -> None:
    """Print the README's configuration table (every LMAAS_* variable)."""
    from lmaas.config import Settings

    typer.echo("| variable | default | meaning |")
    typer.echo("| --- | --- | --- |")
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None else f"`{default}`"
        typer.echo(f"| `LMAAS_{name.upper()}` | {shown} | {field.description or ''} |")


from lmaas.placement.cli import register as _register_placement  # noqa: E402

_register_placement(app)  # lmaas plan, lmaas profile


def main() -> None:
    app()
