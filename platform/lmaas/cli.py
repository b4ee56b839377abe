"""The `lmaas` command: run the platform's processes and administer it.

Each group of commands lives in `lmaas.commands.<group>`; registering one is one line below.
Command modules import heavy dependencies inside their functions, so `lmaas --help` stays fast.
"""

from __future__ import annotations

import typer

from lmaas.commands import jobs, serve, tenants
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

# Tenants' fine-tuning, over the gateway's HTTP API.
app.add_typer(jobs.jobs_app, name="jobs")

# GPU planning: lmaas plan, lmaas profile.
register_placement(app)


@app.command("config-table")
def config_table() -> None:
    """Print the README's configuration tables (every LMAAS_* variable, then the operator's)."""
    from lmaas.config import Settings

    for line in _settings_table(Settings, "LMAAS_"):
        typer.echo(line)
    try:
        from lmaas_operator.settings import OperatorSettings
    except ImportError:  # an install without the operator package
        return
    typer.echo("")
    typer.echo("The operator (`lmaas-operator`) reads these as well:")
    typer.echo("")
    for line in _settings_table(OperatorSettings, "LMAAS_OPERATOR_"):
        typer.echo(line)


def _settings_table(settings: type, prefix: str) -> list[str]:
    """A Markdown table of a pydantic-settings class: variable, default, meaning."""
    import json

    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in settings.model_fields.items():  # type: ignore[attr-defined]
        default = field.get_default(call_default_factory=True)
        if default is None or default == {}:
            shown = ""
        elif isinstance(default, dict):
            shown = f"`{json.dumps(default)}`"
        else:
            shown = f"`{default}`"
        lines.append(f"| `{prefix}{name.upper()}` | {shown} | {field.description or ''} |")
    return lines


def main() -> None:
    app()
