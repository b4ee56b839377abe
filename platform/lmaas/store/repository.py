"""Tenant-scoped data access: every query a tenant's request makes goes through here.

A `TenantRepository` is bound to one tenant and offers no unscoped query, so a route that
holds one cannot read or change another tenant's rows by mistake: a lookup of another
tenant's object returns None, exactly as for a missing one. Parts that add tenant-owned
tables (files, fine-tune jobs) use `get_owned`/`list_owned` or add methods here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmaas.store.models import Adapter, Base, Tenant, UsageDay

__all__ = ["TenantRepository"]

T = TypeVar("T", bound=Base)


class TenantRepository:
    """The rows of one tenant."""

    def __init__(self, session: Session, tenant: Tenant) -> None:
        self.session = session
        self.tenant = tenant

    # Generic ownership ---------------------------------------------------------------

    def scoped(self, model: type[T]) -> Select[tuple[T]]:
        """`SELECT` of `model` restricted to this tenant's rows (model has `tenant_id`)."""
        return select(model).where(model.tenant_id == self.tenant.id)  # type: ignore[attr-defined]

    def get_owned(self, model: type[T], object_id: str) -> T | None:
        """The tenant's `model` row with primary key `object_id`, else None."""
        return self.session.execute(
            self.scoped(model).where(model.id == object_id)  # type: ignore[attr-defined]
        ).scalar_one_or_none()

    def list_owned(self, model: type[T], *, order_by: Any = None) -> list[T]:
        stmt = self.scoped(model)
        if order_by is not None:
            stmt = stmt.order_by(order_by)
        return list(self.session.execute(stmt).scalars())

    def page_owned(
        self,
        model: type[T],
        *,
        after: str | None,
        limit: int,
        newest_first: bool = True,
        where: tuple[ColumnElement[bool], ...] = (),
    ) -> tuple[list[T], bool]:
        """One cursor page of the tenant's `model` rows (by `created_at`, then `id`): the rows
        after the row whose id is `after`, at most `limit`, and whether more follow.

        Raises `LookupError` when `after` is not one of the tenant's rows.
        """
        created, ident = model.created_at, model.id  # type: ignore[attr-defined]
        stmt = self.scoped(model).where(*where)
        if after is not None:
            cursor = self.get_owned(model, after)
            if cursor is None:
                raise LookupError(after)
            at = cursor.created_at  # type: ignore[attr-defined]
            if newest_first:
                stmt = stmt.where(or_(created < at, and_(created == at, ident < after)))
            else:
                stmt = stmt.where(or_(created > at, and_(created == at, ident > after)))
        order = (created.desc(), ident.desc()) if newest_first else (created, ident)
        rows = list(self.session.execute(stmt.order_by(*order).limit(limit + 1)).scalars())
        return rows[:limit], len(rows) > limit

    def add(self, row: T) -> T:
        """Add a new row owned by this tenant (its `tenant_id` is set here)."""
        row.tenant_id = self.tenant.id  # type: ignore[attr-defined]
        self.session.add(row)
        self.session.flush()
        return row

    def commit(self) -> None:
        self.session.commit()

    # Adapters ------------------------------------------------------------------------

    def list_adapters(self) -> list[Adapter]:
        return self.list_owned(Adapter, order_by=Adapter.created_at)

    def get_adapter(self, name: str) -> Adapter | None:
        return self.session.execute(
            self.scoped(Adapter).where(Adapter.name == name)
        ).scalar_one_or_none()

    def count_adapters(self) -> int:
        return self.session.execute(
            select(func.count()).select_from(Adapter).where(Adapter.tenant_id == self.tenant.id)
        ).scalar_one()

    def delete_adapter(self, adapter: Adapter) -> None:
        if adapter.tenant_id != self.tenant.id:
            raise PermissionError("adapter belongs to another tenant")
        self.session.delete(adapter)
        self.session.flush()

    # Usage ---------------------------------------------------------------------------

    def record_usage(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        day: date | None = None,
        requests: int = 1,
    ) -> None:
        """Add one request's tokens to the tenant's counters of `model` for `day` (UTC today).

        Safe under concurrency: an atomic increment, creating the row if it is missing.
        """
        day = day or datetime.now(UTC).date()
        where = (
            UsageDay.tenant_id == self.tenant.id,
            UsageDay.model == model,
            UsageDay.day == day,
        )
        increment = (
            update(UsageDay)
            .where(*where)
            .values(
                requests=UsageDay.requests + requests,
                prompt_tokens=UsageDay.prompt_tokens + prompt_tokens,
                completion_tokens=UsageDay.completion_tokens + completion_tokens,
            )
        )
        if self.session.execute(increment).rowcount:
            return
        try:
            with self.session.begin_nested():
                self.session.add(
                    UsageDay(
                        tenant_id=self.tenant.id,
                        model=model,
                        day=day,
                        requests=requests,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                    )
                )
        except IntegrityError:  # another request created the row meanwhile
            self.session.execute(increment)

    def usage(self, start: date | None = None, end: date | None = None) -> list[UsageDay]:
        """The tenant's usage rows from `start` to `end` (inclusive), by day then model."""
        stmt = self.scoped(UsageDay)
        if start is not None:
            stmt = stmt.where(UsageDay.day >= start)
        if end is not None:
            stmt = stmt.where(UsageDay.day <= end)
        return list(self.session.execute(stmt.order_by(UsageDay.day, UsageDay.model)).scalars())
