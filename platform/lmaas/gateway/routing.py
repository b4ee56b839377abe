"""Which runtime replica serves a request: adapter affinity first, then least load.

Two small pieces behind two seams:

- `ReplicaSource` answers "which replicas of model M are ready?", waiting while there are
  none (model loading; scale from zero). `StaticReplicaSource` is the fixed URL list of
  ``LMAAS_RUNTIME_URLS``; the activator implements the same protocol for services scaled to
  zero.
- `pick_replica` chooses among them (pure, unit-tested): a replica that already holds the
  adapter, unless it is busier than the least loaded one by more than `affinity_slack`
  requests; otherwise the least loaded.

`Router.acquire` combines them and returns a `Lease` that counts the request in flight on
its replica until released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lmaas.gateway.errors import ApiError, ServiceUnavailable
from lmaas.gateway.runtime_client import ReplicaUnreachable, RuntimeClient

__all__ = [
    "Lease",
    "Replica",
    "ReplicaSource",
    "Router",
    "StaticReplicaSource",
    "pick_replica",
]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    """A runtime replica as the gateway sees it."""

    url: str
    model: str | None = None
    ready: bool = False
    in_flight: int = 0
    adapter_ids: set[str] = field(default_factory=set)
    checked_at: float = float("-inf")


class ReplicaSource(Protocol):
    """Where replicas come from: the seam for the activator (scale from zero)."""

    async def ready_replicas(self, model: str) -> Sequence[Replica]:
        """The ready replicas serving `model`, waiting for one if there is none yet.

        Raises `ServiceUnavailable` when none becomes ready in time.
        """
        ...

    def mark_down(self, replica: Replica) -> None:
        """`replica` refused a connection: skip it until it is ready again."""
        ...

    def known_replicas(self) -> Sequence[Replica]:
        """Every replica known now, ready or not (for broadcasts such as adapter unloads)."""
        ...

    async def aclose(self) -> None: ...


def pick_replica(
    replicas: Sequence[Replica], adapter_id: str | None, *, affinity_slack: int = 4
) -> Replica:
    """The replica for a request with `adapter_id` (None = base model); `replicas` non-empty."""
    if not replicas:
        raise ValueError("pick_replica needs at least one replica")

    def load(r: Replica) -> tuple[int, int, str]:
        return (r.in_flight, len(r.adapter_ids), r.url)

    least = min(replicas, key=load)
    if adapter_id is None:
        return least
    holders = [r for r in replicas if adapter_id in r.adapter_ids]
    if holders:
        best = min(holders, key=load)
        if best.in_flight <= least.in_flight + affinity_slack:
            return best
    return least


class Lease:
    """One request in flight on `replica`; `release` exactly once (idempotent)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._released = False
        replica.in_flight += 1

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.replica.in_flight -= 1


class Router:
    """Picks and leases replicas from a `ReplicaSource`."""

    def __init__(self, source: ReplicaSource, *, affinity_slack: int = 4) -> None:
        self.source = source
        self.affinity_slack = affinity_slack

    async def acquire(self, model: str, adapter_id: str | None) -> Lease:
        """Lease a ready replica of `model` for a request using `adapter_id` (may wait)."""
        candidates = await self.source.ready_replicas(model)
        if not candidates:
            raise ServiceUnavailable(
                f"no runtime replica for {model} is reachable; retry shortly",
                code="no_replica_available",
                headers={"Retry-After": "2"},
            )
        replica = pick_replica(candidates, adapter_id, affinity_slack=self.affinity_slack)
        if adapter_id is not None:
            replica.adapter_ids.add(adapter_id)  # it loads the adapter on demand
        return Lease(replica)


class StaticReplicaSource:
    """A fixed list of runtime URLs, probed for readiness and model.

    A replica's state is refreshed when older than `ttl_s`, or at once after `mark_down`.
    While no replica of the model is ready, callers poll every `poll_s` up to `wait_s`.
    """

    def __init__(
        self,
        urls: Sequence[str],
        client: RuntimeClient,
        *,
        wait_s: float = 300.0,
        poll_s: float = 0.5,
        ttl_s: float = 5.0,
    ) -> None:
        self.replicas = [Replica(url=u.rstrip("/")) for u in urls]
        self._client = client
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()

    async def _probe(self, replica: Replica) -> None:
        ready = await self._client.is_ready(replica.url)
        if ready and replica.model is None:
            try:
                replica.model = (await self._client.info(replica.url)).model
            except (ReplicaUnreachable, ApiError):
                ready = False
        if ready:
            try:
                loaded = await self._client.adapters(replica.url)
                replica.adapter_ids = {a.adapter_id for a in loaded}
            except (ReplicaUnreachable, ApiError):
                pass  # which adapters it holds is only a hint
        if ready != replica.ready:
            log.info("runtime %s is %s", replica.url, "ready" if ready else "not ready")
        replica.ready = ready
        replica.checked_at = time.monotonic()

    async def _refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            stale = [r for r in self.replicas if now - r.checked_at >= self._ttl_s]
            if stale:
                await asyncio.gather(*(self._probe(r) for r in stale))

    async def ready_replicas(self, model: str) -> Sequence[Replica]:
        deadline = time.monotonic() + self._wait_s
        while True:
            await self._refresh()
            found = [r for r in self.replicas if r.ready and r.model == model]
            if found:
                return found
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f"no runtime replica serving {model} became ready within "
                    f"{self._wait_s:.0f}s; retry later",
                    code="no_replica_available",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(self._poll_s)
            # Replicas that are not ready are probed on every round while we wait.
            for replica in self.replicas:
                if not replica.ready:
                    replica.checked_at = float("-inf")

    def mark_down(self, replica: Replica) -> None:
        replica.ready = False
        replica.checked_at = time.monotonic()  # probed again after ttl_s

    def known_replicas(self) -> Sequence[Replica]:
        return list(self.replicas)

    async def aclose(self) -> None:
        return None
