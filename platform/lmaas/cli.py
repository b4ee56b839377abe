"""The `lmaas` command: run the platform's processes and administer it.

Each group of commands lives in `lmaas.commands.<group>`; registering one is one line below.
Command modules import heavy dependencies inside their functions, so `lmaas --help` stays fast.
"""

from __future__ import annotations

import typer

from lmaas.commands import serve, tenants
from lmaas.placement.cli import register as register_placement

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


# Processes.
app.command("up")(serve.up)
app.command("gateway")(serve.gateway)
app.command("runtime")(serve.runtime)
app.command("worker")(serve.worker)

# Administration (works on the database directly; no running gateway needed).
app.add_typer(tenants.tenant_app, name="tenant")
app.add_typer(tenants.key_app, name="key")

# GPU planning: lmaas plan, lmaas profile.
register_placement(app)


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


def main() -> None:
    app()
