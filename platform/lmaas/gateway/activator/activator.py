"""The activator: a `ReplicaSource` that scales services from zero and back to zero.

A request for a model whose service has no ready replica is *held*: the activator asks its
`ScaleBackend` for a scale-up and polls the backend's endpoints and each runtime's
``/readyz`` until one is ready, then returns the ready replicas and the router forwards the
request — once, to a ready replica. Requests arriving during a cold start wait on the same
activation (one scale-up call, not one per request). A request still held after
``LMAAS_ACTIVATION_TIMEOUT_S`` is answered 503 with ``Retry-After``; it was never sent.

Which service holds a model's replicas depends on the tenant asking (`ScaleBackend.lookup`:
its own service first, else a shared one, never another tenant's); lookups are cached per
(model, tenant) for `lookup_ttl_s`.

A background loop refreshes the replicas of warm services, keeps a running service at its
plan (`ScaleBackend.follow_plan`: the operator may re-plan a live service; for a serverless
one the activator alone writes the replica counts, the operator only the plan), and scales
a service to zero once it has been idle — nothing held, nothing in flight on its
replicas, no scaling under way — for its idle timeout. A scale-down first withdraws the replicas from routing, so a
request arriving meanwhile waits for the next scale-up instead of reaching a stopping
replica.

Retries: a replica that refuses the connection is marked down by the router and the
request is offered another one (or waits for the next activation); a replica that fails
mid-stream is not retried, since part of the answer was already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lmaas.gateway.activator.activity import ActivityLedger, LocalActivity
from lmaas.gateway.activator.backend import BackendError, ScaleBackend
from lmaas.gateway.activator.metrics import ActivatorMetrics
from lmaas.gateway.activator.prober import ReplicaProber
from lmaas.gateway.activator.service_state import ServiceState
from lmaas.gateway.errors import ApiError, ServiceUnavailable
from lmaas.gateway.routing import Replica, TenantRef
from lmaas.gateway.runtime_client import RuntimeClient

__all__ = ["ActivationFailed", "Activator"]

log = logging.getLogger(__name__)

_FAILURE_BACKOFF_S = 10.0


class ActivationFailed(Exception):
    """Every replica of the service reports that its model could not load."""


@dataclass
class _Lookup:
    key: str | None
    at: float


def _consume(task: asyncio.Task[None]) -> None:
    """Activation outcomes are read by the held requests; never warn if nobody was left."""
    if not task.cancelled():
        task.exception()


class Activator:
    """Holds requests for services at zero replicas and scales them (see the module)."""

    def __init__(
        self,
        backend: ScaleBackend,
        client: RuntimeClient,
        *,
        metrics: ActivatorMetrics | None = None,
        activity: ActivityLedger | None = None,
        activation_timeout_s: float = 300.0,
        poll_s: float = 0.25,
        refresh_s: float = 5.0,
        rescale_s: float = 5.0,
        lookup_ttl_s: float = 10.0,
        tick_s: float = 0.5,
    ) -> None:
        self.backend = backend
        self.metrics = metrics or ActivatorMetrics()
        self.activity = activity or LocalActivity()
        self._prober = ReplicaProber(backend, client, self.metrics)
        self._activation_timeout_s = activation_timeout_s
        self._poll_s = poll_s
        self._refresh_s = refresh_s
        self._rescale_s = rescale_s
        self._lookup_ttl_s = lookup_ttl_s
        self._tick_s = tick_s
        self._services: dict[str, ServiceState] = {}
        self._lookups: dict[tuple[str, str | None], _Lookup] = {}
        self._lookup_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._deactivations: set[asyncio.Task[None]] = set()

    # Lifecycle -----------------------------------------------------------------------

    async def start(self, *, prewarm: Sequence[str] = ()) -> None:
        """Start the backend and the idle loop; begin activating the `prewarm` models."""
        await self.backend.start()
        self._loop_task = asyncio.create_task(self._run(), name="lmaas-activator")
        for model in prewarm:
            try:
                service = await self._service(model)
            except ApiError as exc:
                log.warning("cannot pre-warm %s: %s", model, exc.message)
                continue
            self._ensure_activation(service)

    async def aclose(self) -> None:
        tasks = [t for t in (self._loop_task,) if t is not None]
        tasks += [s.activation for s in self._services.values() if s.activation is not None]
        tasks += list(self._deactivations)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.backend.aclose()
        finally:
            await self.activity.aclose()

    # ReplicaSource -------------------------------------------------------------------

    async def ready_replicas(
        self, model: str, tenant: TenantRef | None = None
    ) -> Sequence[Replica]:
        service = await self._service(model, tenant)
        service.held += 1
        self.metrics.held.labels(service.key).inc()
        try:
            return await self._wait_ready(service)
        finally:
            service.held -= 1
            service.last_active = time.monotonic()
            self.metrics.held.labels(service.key).dec()

    def mark_down(self, replica: Replica) -> None:
        replica.ready = False
        replica.checked_at = time.monotonic()

    def known_replicas(self) -> Sequence[Replica]:
        return [r for s in self._services.values() for r in s.replicas.values()]

    # Services --------------------------------------------------------------------------

    def service_state(self, key: str) -> ServiceState | None:
        """The activator's view of service `key` (for status displays and tests)."""
        return self._services.get(key)

    async def _service(self, model: str, tenant: TenantRef | None = None) -> ServiceState:
        now = time.monotonic()
        where = (model, None if tenant is None else tenant.name)
        cached = self._lookups.get(where)
        if cached is None or now - cached.at >= self._lookup_ttl_s:
            async with self._lookup_lock:
                cached = self._lookups.get(where)
                if cached is None or time.monotonic() - cached.at >= self._lookup_ttl_s:
                    cached = await self._lookup(model, tenant, cached)
        if cached.key is None:
            raise ServiceUnavailable(
                f"no runtime service serves the model `{model}`: deploy one (a ModelService "
                "for it) or ask an administrator",
                code="model_not_served",
                headers={"Retry-After": "30"},
            )
        return self._services[cached.key]

    async def _lookup(
        self, model: str, tenant: TenantRef | None, previous: _Lookup | None
    ) -> _Lookup:
        try:
            info = await self.backend.lookup(model, tenant)
        except BackendError as exc:
            if previous is not None and previous.key is not None:
                log.warning(
                    "cannot refresh the service of %s (%s); keeping the last one", model, exc
                )
                return previous
            raise ServiceUnavailable(
                f"cannot find the runtimes of `{model}` right now ({exc}); retry shortly",
                code="no_replica_available",
                headers={"Retry-After": "5"},
            ) from exc
        if info is None:
            found = _Lookup(None, time.monotonic())
        else:
            service = self._services.get(info.key)
            if service is None:
                service = ServiceState(info)
                try:
                    service.active = await self.backend.current_replicas(info) > 0
                except BackendError:
                    service.active = True  # unknown: let the idle timer find out later
                self._services[info.key] = service
            else:
                service.info = info
            found = _Lookup(info.key, time.monotonic())
        self._lookups[(model, None if tenant is None else tenant.name)] = found
        return found

    # Holding and activating ------------------------------------------------------------

    async def _wait_ready(self, service: ServiceState) -> Sequence[Replica]:
        deadline = time.monotonic() + self._activation_timeout_s
        while True:
            if not service.deactivating:
                ready = service.ready()
                if ready:
                    return ready
            self._refuse_if_failing(service)
            task = self._ensure_activation(service)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(service)
            try:
                await asyncio.wait_for(asyncio.shield(task), remaining)
            except TimeoutError:
                raise self._timed_out(service) from None
            except ActivationFailed as exc:
                raise self._failed(service, str(exc), _FAILURE_BACKOFF_S) from None

    def _refuse_if_failing(self, service: ServiceState) -> None:
        """A service whose model just failed to load refuses at once for a short while."""
        if service.failure is None:
            return
        when, why = service.failure
        left = _FAILURE_BACKOFF_S - (time.monotonic() - when)
        if left > 0:
            raise self._failed(service, why, left)

    def _failed(self, service: ServiceState, why: str, retry_s: float) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"the runtime of `{service.info.model}` could not load its model: {why}. "
            "Check the runtime's logs; the next request after the Retry-After tries again.",
            code="model_failed",
            headers={"Retry-After": str(max(1, round(retry_s)))},
        )

    def _timed_out(self, service: ServiceState) -> ServiceUnavailable:
        self.metrics.timeouts.labels(service.key).inc()
        retry = service.retry_after_s()
        return ServiceUnavailable(
            f"`{service.info.model}` is scaling up from zero and no replica was ready within "
            f"{self._activation_timeout_s:g}s; your request was not sent. Retry in {retry}s.",
            code="activation_timeout",
            headers={"Retry-After": str(retry)},
        )

    def _ensure_activation(self, service: ServiceState) -> asyncio.Task[None]:
        if service.activation is None or service.activation.done():
            service.activation = asyncio.create_task(
                self._activate(service), name=f"lmaas-activate-{service.key}"
            )
            service.activation.add_done_callback(_consume)
        return service.activation

    async def _activate(self, service: ServiceState) -> None:
        """Scale `service` up and wait until a replica is ready (or give up at the timeout)."""
        async with service.scale_lock:
            started = time.monotonic()
            service.activation_started = started
            deadline = started + self._activation_timeout_s
            cold = False
            next_scale = started
            while time.monotonic() < deadline:
                try:
                    if time.monotonic() >= next_scale:
                        cold = await self._scale_up(service) or cold
                        next_scale = time.monotonic() + self._rescale_s
                    await self._prober.probe(service)
                except BackendError as exc:
                    log.warning("scaling up %s: %s (retrying)", service.key, exc)
                if service.ready():
                    elapsed = time.monotonic() - started
                    service.failure = None
                    if cold:
                        service.last_cold_start_s = elapsed
                        self.metrics.cold_start_seconds.labels(service.key).observe(elapsed)
                        log.info("cold start of %s: ready in %.1fs", service.key, elapsed)
                    return
                failing = [service.failed[u] for u in service.replicas if u in service.failed]
                if service.replicas and len(failing) == len(service.replicas):
                    service.failure = (time.monotonic(), failing[0])
                    self.metrics.failures.labels(service.key).inc()
                    log.error("%s cannot load its model: %s", service.key, failing[0])
                    raise ActivationFailed(failing[0])
                await asyncio.sleep(self._poll_s)
            log.warning(
                "%s: no replica ready %.0fs after the scale-up; still waiting for it",
                service.key,
                self._activation_timeout_s,
            )

    async def _scale_up(self, service: ServiceState) -> bool:
        """Ask the backend for the active size; True when this is a start from zero."""
        info = service.info
        for url in [u for u in service.replicas if u in service.failed]:
            await self.backend.discard(info, url)  # a fresh try after a failed load
            service.retire(url)
        current = await self.backend.current_replicas(info)
        size = await self.backend.scale_up(info)
        service.active = True
        if current < size:
            self.metrics.scale_events.labels(service.key, "up").inc()
            if current == 0:
                self.metrics.cold_starts.labels(service.key).inc()
                log.info("cold start of %s: asked for %d replica(s)", service.key, size)
            else:
                log.info("%s: scaling up from %d to %d replica(s)", service.key, current, size)
        return current == 0

    # The idle loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            for service in list(self._services.values()):
                try:
                    await self._tend(service)
                except BackendError as exc:
                    log.warning("%s: %s", service.key, exc)
                except Exception:
                    log.exception("activator: tending %s failed", service.key)

    async def _tend(self, service: ServiceState) -> None:
        now = time.monotonic()
        if service.busy():
            service.last_active = now
            await self._share_activity(service, now)
        if service.activating() or service.deactivating:
            return
        if service.replicas and now - service.checked_at >= self._refresh_s:
            await self._prober.probe(service)
        await self._follow_plan(service)
        now = time.monotonic()
        if service.should_scale_to_zero(now) and not await self._busy_elsewhere(service, now):
            task = asyncio.create_task(
                self._scale_to_zero(service, idle_s=service.idle_for(now)),
                name=f"lmaas-idle-{service.key}",
            )
            self._deactivations.add(task)
            task.add_done_callback(self._deactivations.discard)

    async def _follow_plan(self, service: ServiceState) -> None:
        """Keep a running service at its plan, every `rescale_s` (the plan may change)."""
        now = time.monotonic()
        if not service.active or now - service.followed_at < self._rescale_s:
            return
        if service.scale_lock.locked():
            return  # scaling up or down right now
        service.followed_at = now
        async with service.scale_lock:
            before, after = await self.backend.follow_plan(service.info)
        if before != after:
            direction = "up" if after > before else "down"
            self.metrics.scale_events.labels(service.key, direction).inc()
            log.info("%s: to its plan, %d → %d replica(s)", service.key, before, after)

    async def _share_activity(self, service: ServiceState, now: float) -> None:
        """Tell the other gateways this one is using the service (at most every few s)."""
        timeout = service.info.idle_timeout_s
        every = max(1.0, min(30.0, timeout / 10)) if timeout > 0 else 30.0
        if now - service.shared_at < every:
            return
        try:
            await self.activity.touch(service.key, keep_s=max(2 * timeout, 60.0))
            service.shared_at = now
        except Exception as exc:  # the ledger is advisory; a Redis outage must not stop us
            log.warning("cannot share the activity of %s: %s", service.key, exc)

    async def _busy_elsewhere(self, service: ServiceState, now: float) -> bool:
        """Another gateway used the service within its idle timeout (then wait longer)."""
        try:
            idle_s = await self.activity.idle_for(service.key)
        except Exception as exc:
            log.warning(
                "cannot read the activity of %s (%s): not scaling it down", service.key, exc
            )
            return True
        if idle_s is not None and idle_s < service.info.idle_timeout_s:
            service.last_active = now - idle_s
            return True
        return False

    async def _scale_to_zero(self, service: ServiceState, *, idle_s: float) -> None:
        # Withdraw the replicas at once (no await before this): a request arriving from now
        # on waits for the next activation, which waits for this scale-down to finish.
        service.deactivating = True
        service.retire_all()
        self.metrics.ready_replicas.labels(service.key).set(0)
        try:
            async with service.scale_lock:
                log.info("%s idle for %.0fs: scaling to zero", service.key, idle_s)
                await self.backend.scale_to_zero(service.info)
                service.active = False
                self.metrics.scale_events.labels(service.key, "down").inc()
        except BackendError as exc:
            log.warning("could not scale %s to zero: %s (retrying in 30s)", service.key, exc)
            service.last_active = time.monotonic() - service.info.idle_timeout_s + 30
        finally:
            service.deactivating = False
