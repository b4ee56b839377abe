"""`lmaas tenant …` and `lmaas key …`: administer tenants and API keys.

These commands work on the database directly (through `lmaas.store.tenants`, like the admin
API), so they need no running gateway: only the same LMAAS_HOME / LMAAS_DATABASE_URL.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lmaas.commands.common import console, fail, open_database

__all__ = ["key_app", "tenant_app"]

tenant_app = typer.Typer(help="Create, list, update and delete tenants.", no_args_is_help=True)
key_app = typer.Typer(help="Create, list and revoke tenants' API keys.", no_args_is_help=True)

Quota = Annotated[int | None, typer.Option(min=1, show_default=False)]


def _get_tenant(session, name: str):  # type: ignore[no-untyped-def]
    from lmaas.store.tenants import get_tenant

    tenant = get_tenant(session, name)
    if tenant is None:
        fail(f"no tenant named {name!r}", hint="`lmaas tenant list` shows the tenants")
    return tenant


def _show_tenants(rows: list) -> None:  # type: ignore[type-arg]
    table = Table("name", "id", "requests/min", "tokens/min", "max adapters", "max jobs", "created")
    for t in rows:
        table.add_row(
            t.name,
            t.id,
            str(t.requests_per_minute),
            str(t.tokens_per_minute),
            str(t.max_adapters),
            str(t.max_concurrent_jobs),
            t.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="lowercase letters, digits and '-'")],
    requests_per_minute: Quota = None,
    tokens_per_minute: Quota = None,
    max_adapters: Quota = None,
    max_concurrent_jobs: Quota = None,
) -> None:
    """Create a tenant (quotas default to the LMAAS_DEFAULT_* settings)."""
    from lmaas.config import get_settings
    from lmaas.store.tenants import TenantExistsError, TenantNameError, create_tenant

    db = open_database()
    try:
        with db.session() as session:
            tenant = create_tenant(
                session,
                name,
                get_settings(),
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                max_adapters=max_adapters,
                max_concurrent_jobs=max_concurrent_jobs,
            )
            _show_tenants([tenant])
    except TenantNameError as exc:
        fail(str(exc))
    except TenantExistsError as exc:
        fail(str(exc), hint=f"`lmaas key create {name}` gives it a new key")
    finally:
        db.dispose()
    console.print(f"next: [bold]lmaas key create {name}[/]")


@tenant_app.command("list")
def tenant_list() -> None:
    """List the tenants and their quotas."""
    from lmaas.store.tenants import list_tenants

    db = open_database()
    try:
        with db.session() as session:
            _show_tenants(list_tenants(session))
    finally:
        db.dispose()


@tenant_app.command("update")
def tenant_update(
    name: str,
    requests_per_minute: Quota = None,
    tokens_per_minute: Quota = None,
    max_adapters: Quota = None,
    max_concurrent_jobs: Quota = None,
) -> None:
    """Change a tenant's quotas (only those given)."""
    from lmaas.store.tenants import update_quotas

    db = open_database()
    try:
        with db.session() as session:
            tenant = update_quotas(
                session,
                _get_tenant(session, name),
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                max_adapters=max_adapters,
                max_concurrent_jobs=max_concurrent_jobs,
            )
            _show_tenants([tenant])
    finally:
        db.dispose()


@tenant_app.command("delete")
def tenant_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a tenant with its keys, adapters (and their files), usage and jobs."""
    from lmaas.config import get_settings
    from lmaas.store.artifacts import ArtifactStore
    from lmaas.store.tenants import delete_tenant

    if not yes:
        typer.confirm(f"Delete tenant {name!r} and everything it owns?", abort=True)
    db = open_database()
    try:
        with db.session() as session:
            tenant = _get_tenant(session, name)
            tenant_id = tenant.id
            delete_tenant(session, tenant)
        ArtifactStore(get_settings().resolved_artifact_url).delete(f"tenants/{tenant_id}")
    finally:
        db.dispose()
    console.print(f"deleted tenant {name}")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="the tenant's name")],
    name: Annotated[str, typer.Option(help="a label to recognise the key")] = "",
) -> None:
    """Create an API key for a tenant and print it (the only time it is shown)."""
    from lmaas.store.tenants import issue_key

    db = open_database()
    try:
        with db.session() as session:
            issued = issue_key(session, _get_tenant(session, tenant), name)
            key_id = issued.record.id
    finally:
        db.dispose()
    console.print(
        f"[dim]key id {key_id} for tenant {tenant} — store it now; it is not shown again:[/]"
    )
    typer.echo(issued.secret)


@key_app.command("list")
def key_list(tenant: str) -> None:
    """List a tenant's keys (their prefixes, never the secrets)."""
    from lmaas.store.tenants import list_keys

    db = open_database()
    try:
        with db.session() as session:
            table = Table("id", "name", "prefix", "created", "revoked")
            for k in list_keys(session, _get_tenant(session, tenant)):
                table.add_row(
                    k.id,
                    k.name,
                    k.prefix + "…",
                    k.created_at.strftime("%Y-%m-%d %H:%M"),
                    k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
                )
            console.print(table)
    finally:
        db.dispose()


@key_app.command("revoke")
def key_revoke(tenant: str, key_id: str) -> None:
    """Revoke a key: it stops working at once."""
    from lmaas.store.tenants import get_key, revoke_key

    db = open_database()
    try:
        with db.session() as session:
            key = get_key(session, _get_tenant(session, tenant), key_id)
            if key is None:
                fail(f"tenant {tenant!r} has no key {key_id!r}", hint=f"`lmaas key list {tenant}`")
            revoke_key(session, key)
    finally:
        db.dispose()
    console.print(f"revoked {key_id}")
