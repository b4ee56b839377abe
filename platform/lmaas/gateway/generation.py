"""One completion from admission to usage: the part chat and text completions share.

`resolve_target` turns the request's `model` into a base model and (maybe) one of the
tenant's adapters. `Generation.start` admits the request (rate limits), leases a replica
(retrying another one if a replica refuses the connection) and opens the runtime's event
stream. `Generation.finish` — always called, also when the client goes away — closes the
stream, frees the lease, meters the exact tokens the runtime reported, records usage and
debits the tokens bucket.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from sqlalchemy import or_, select

from lmaas.gateway.errors import (
    ApiError,
    BadGateway,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from lmaas.gateway.ratelimit import Quota
from lmaas.gateway.routing import Lease
from lmaas.gateway.runtime_client import GenerationStream, ReplicaUnreachable
from lmaas.gateway.state import GatewayState
from lmaas.protocol import ErrorInfo, GenerateEvent, GenerateRequest, Usage
from lmaas.store.models import ServedModel, Tenant
from lmaas.store.repository import TenantRepository

__all__ = ["Generation", "Target", "base_model_names", "resolve_target"]

log = logging.getLogger(__name__)

_MAX_REPLICA_TRIES = 3


@dataclass(frozen=True)
class Target:
    """What a request runs on. `name` is what the client asked for (responses, usage)."""

    name: str
    base_model: str
    adapter_id: str | None = None
    adapter_uri: str | None = None


def base_model_names(repo: TenantRepository) -> list[str]:
    """Base models this tenant may use: the shared ones and its own full fine-tunes."""
    stmt = (
        select(ServedModel.id)
        .where(or_(ServedModel.tenant_id.is_(None), ServedModel.tenant_id == repo.tenant.id))
        .order_by(ServedModel.created_at, ServedModel.id)
    )
    return list(repo.session.execute(stmt).scalars())


def _model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it. "
        "GET /v1/models lists the models you can use.",
        code="model_not_found",
        param="model",
    )


def resolve_target(repo: TenantRepository, model: str) -> Target:
    """The base model or adapter `model` names for this tenant; 404 if it has none."""
    if model in base_model_names(repo):
        return Target(name=model, base_model=model)
    adapter = repo.get_adapter(model)
    if adapter is None:
        raise _model_not_found(model)
    if adapter.status == "failed":
        raise InvalidRequest(
            f"adapter `{model}` failed verification (its weights are broken); delete it and "
            "upload a good copy",
            code="adapter_failed",
            param="model",
        )
    return Target(model, adapter.base_model, adapter.id, adapter.uri)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _error_from_event(info: ErrorInfo) -> ApiError:
    if info.code == "adapter_not_found":
        return NotFound(info.message, code=info.code, param="model")
    return BadGateway(info.message, code=info.code)


class Generation:
    """A request admitted and running on a leased replica."""

    def __init__(
        self,
        state: GatewayState,
        tenant: Tenant,
        quota: Quota,
        target: Target,
        lease: Lease,
        stream: GenerationStream,
    ) -> None:
        self.state = state
        self.tenant_id = tenant.id
        self.quota = quota
        self.target = target
        self.lease = lease
        self.stream = stream
        self.created = int(time.time())
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: ErrorInfo | None = None
        self._started = time.monotonic()
        self._first_token_seen = False
        self._finished = False
        state.metrics.in_flight.inc()

    @classmethod
    async def start(
        cls, state: GatewayState, tenant: Tenant, target: Target, request: GenerateRequest
    ) -> Generation:
        quota = Quota(tenant.requests_per_minute, tenant.tokens_per_minute)
        admission = await state.limiter.admit(tenant.id, quota)
        if not admission.allowed:
            state.metrics.rate_limited.labels(admission.limit).inc()
            per_minute = (
                quota.requests_per_minute
                if admission.limit == "requests"
                else quota.tokens_per_minute
            )
            raise RateLimited(
                f"Rate limit reached: {per_minute} {admission.limit} per minute for this "
                f"tenant. Retry after {max(1, round(admission.retry_after_s))}s, or ask an "
                "administrator to raise the quota.",
                kind=admission.limit,
                retry_after_s=admission.retry_after_s,
            )
        request.tenant_id = tenant.id
        request.adapter_id, request.adapter_uri = target.adapter_id, target.adapter_uri
        tries = 0
        while True:
            # A replica that refused is marked down: the next acquire picks another ready
            # one, or waits until one is ready again (a restarting runtime, scale from zero).
            lease = await state.router.acquire(target.base_model, target.adapter_id)
            try:
                stream = await state.client.generate(lease.replica.url, request)
            except ReplicaUnreachable:
                lease.release()
                state.router.source.mark_down(lease.replica)
                tries += 1
                log.warning("runtime %s unreachable; trying again", lease.replica.url)
                if tries >= _MAX_REPLICA_TRIES:
                    raise ServiceUnavailable(
                        "the model runtimes cannot be reached; retry shortly",
                        code="no_replica_available",
                        headers={"Retry-After": "2"},
                    ) from None
                continue
            except BaseException:
                lease.release()
                raise
            return cls(state, tenant, quota, target, lease, stream)

    async def events(self) -> AsyncIterator[GenerateEvent]:
        """The runtime's events; remembers usage, finish reason and error as they pass."""
        async for event in self.stream:
            if event.usage is not None:
                self.usage = event.usage
            if event.text and not self._first_token_seen:
                self._first_token_seen = True
                self.state.metrics.first_token_seconds.labels(self.target.base_model).observe(
                    time.monotonic() - self._started
                )
            if event.error is not None:
                self.error = event.error
            if event.finish_reason is not None:
                self.finish_reason = event.finish_reason
            yield event
            if event.finish_reason is not None:
                break

    async def collect(self) -> str:
        """The whole output text (non-streaming); raises if the runtime reported an error."""
        try:
            parts = [event.text async for event in self.events()]
        finally:
            await self.finish()
        if self.error is not None:
            raise _error_from_event(self.error)
        if self.finish_reason is None:
            raise BadGateway("the model runtime ended the stream early")
        return "".join(parts)

    def usage_or_zero(self) -> Usage:
        return self.usage or Usage(prompt_tokens=0, completion_tokens=0)

    async def finish(self) -> None:
        """Close the stream, free the replica, meter and record usage (once; shielded)."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            finally:
                self.lease.release()
                self.state.metrics.in_flight.dec()
            usage = self.usage
            if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
                return
            tokens = self.state.metrics.tokens
            tokens.labels(self.target.base_model, "prompt").inc(usage.prompt_tokens)
            tokens.labels(self.target.base_model, "completion").inc(usage.completion_tokens)
            try:
                await anyio.to_thread.run_sync(self._record_usage, usage)
                await self.state.limiter.debit_tokens(
                    self.tenant_id, self.quota, usage.total_tokens
                )
            except Exception:
                log.exception("could not record usage of tenant %s", self.tenant_id)

    def _record_usage(self, usage: Usage) -> None:
        with self.state.db.session() as session:
            tenant = session.get(Tenant, self.tenant_id)
            if tenant is None:  # deleted meanwhile
                return
            TenantRepository(session, tenant).record_usage(
                self.target.name, usage.prompt_tokens, usage.completion_tokens
            )
