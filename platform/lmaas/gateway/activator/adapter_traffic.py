"""Adapter traffic on Kubernetes: each Adapter's request rate out, its placement in.

The operator loads an adapter on k runtime replicas, k growing with the adapter's request
rate, which it reads from the Adapter's annotation ``lmaas.io/request-rate`` (requests/s).
`AdapterTraffic` is the gateway's side of that loop, every `period_s`:

- it lists the Adapter resources (their ``status.adapterId`` is the id requests carry, and
  ``status.loadedOn`` the pods the operator placed them on): routing prefers those pods for
  the adapter's requests (`placed_on`);
- it turns the gateway's own per-adapter request counters into rates over the last period
  and writes an Adapter's annotation when its rate moved by more than `change` (relative,
  or from/to zero), so a rate wobbling in place never makes the operator re-place.

With several gateway replicas each sees only part of the traffic, so with Redis
(``LMAAS_REDIS_URL``) they add their counts into one Redis hash and take the rates from its
totals; one gateway per period (a Redis lock) writes the annotations. Without Redis there is
one gateway and its own counters are the totals. Only the Kubernetes scale backend runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmaas import kube_names as kn
from lmaas.gateway.activator.backend import BackendError
from lmaas.gateway.activator.kube_api import KubeApi

__all__ = [
    "ADAPTERS",
    "AdapterCounts",
    "AdapterTraffic",
    "LocalAdapterCounts",
    "RedisAdapterCounts",
]

log = logging.getLogger(__name__)

ADAPTERS = ("lmaas.io/v1alpha1", "adapters")


class AdapterCounts(Protocol):
    """Requests per adapter id since some fixed start, over every gateway that shares them."""

    async def totals(self) -> dict[str, float]: ...

    async def may_write(self, hold_s: float) -> bool:
        """Whether this gateway writes the annotations this period (one gateway does)."""
        ...

    async def aclose(self) -> None: ...


class LocalAdapterCounts:
    """One gateway: its own router's counters are the totals."""

    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts

    async def totals(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._counts.items()}

    async def may_write(self, hold_s: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class RedisAdapterCounts:
    """Every gateway adds its new counts into one Redis hash; the hash holds the totals."""

    def __init__(self, counts: Counter[str], url: str, *, prefix: str = "lmaas") -> None:
        import redis.asyncio as aioredis

        self._counts = counts
        self._flushed: Counter[str] = Counter()
        self._redis = aioredis.Redis.from_url(url)
        prefix = prefix.rstrip(":")
        self._key = f"{prefix}:adapter-traffic:requests"
        self._lock = f"{prefix}:adapter-traffic:writer"
        self._me = uuid.uuid4().hex

    async def totals(self) -> dict[str, float]:
        fresh = {k: v - self._flushed[k] for k, v in self._counts.items() if v > self._flushed[k]}
        if fresh:
            async with self._redis.pipeline(transaction=True) as pipe:
                for adapter_id, n in fresh.items():
                    pipe.hincrby(self._key, adapter_id, n)
                await pipe.execute()
            self._flushed.update(fresh)
        raw = await self._redis.hgetall(self._key)
        return {k.decode(): float(v) for k, v in raw.items()}

    async def may_write(self, hold_s: float) -> bool:
        ms = max(1, int(hold_s * 1000))
        if await self._redis.set(self._lock, self._me, nx=True, px=ms):
            return True
        if (await self._redis.get(self._lock)) == self._me.encode():
            await self._redis.pexpire(self._lock, ms)
            return True
        return False

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass
class _Adapter:
    namespace: str
    name: str
    annotated: float | None
    loaded_on: list[str] = field(default_factory=list)


def _rate(raw: Any) -> float | None:
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        return None


class AdapterTraffic:
    """Lists Adapters (placement) and writes their request rates (see the module)."""

    def __init__(
        self,
        api: KubeApi,
        counts: AdapterCounts,
        *,
        namespace: str | None = None,
        period_s: float = 15.0,
        change: float = 0.25,
    ) -> None:
        self.api = api
        self.counts = counts
        self.namespace = namespace
        self.period_s = period_s
        self.change = change
        self._adapters: dict[str, _Adapter] = {}
        self._placement: dict[tuple[str, str], set[str]] = {}
        self._last: tuple[float, dict[str, float]] | None = None
        self._task: asyncio.Task[None] | None = None

    # Placement ----------------------------------------------------------------------

    def placed_on(self, namespace: str, pod: str) -> set[str]:
        """Ids of the adapters the operator loaded on `pod` (in `namespace`)."""
        return set(self._placement.get((namespace, pod), ()))

    async def refresh(self) -> None:
        """List the Adapters: their ids, placement and annotated rate."""
        items = await self.api.list(*ADAPTERS, namespace=self.namespace, selector="")
        adapters: dict[str, _Adapter] = {}
        placement: dict[tuple[str, str], set[str]] = {}
        for item in items:
            meta, status = item.get("metadata") or {}, item.get("status") or {}
            adapter_id = status.get("adapterId")
            if not adapter_id or not meta.get("name") or not meta.get("namespace"):
                continue  # not registered yet: no request can name it
            annotations = meta.get("annotations") or {}
            loaded_on = [str(p) for p in status.get("loadedOn") or []]
            adapters[adapter_id] = _Adapter(
                namespace=meta["namespace"],
                name=meta["name"],
                annotated=_rate(annotations.get(kn.ANNOTATION_REQUEST_RATE)),
                loaded_on=loaded_on,
            )
            for pod in loaded_on:
                placement.setdefault((meta["namespace"], pod), set()).add(adapter_id)
        self._adapters, self._placement = adapters, placement

    # Rates --------------------------------------------------------------------------

    async def rates(self, now: float | None = None) -> dict[str, float] | None:
        """Requests/s per adapter id since the previous call (None on the first call)."""
        now = time.monotonic() if now is None else now
        totals = await self.counts.totals()
        previous, self._last = self._last, (now, totals)
        if previous is None or now <= previous[0]:
            return None
        then, before = previous
        return {
            k: max(0.0, v - before.get(k, 0.0)) / (now - then)
            for k, v in totals.items()
            if v - before.get(k, 0.0) > 0
        }

    def _moved(self, old: float | None, new: float) -> bool:
        if old is None:
            return new > 0
        if (old == 0) != (new == 0):
            return True
        return abs(new - old) > self.change * old

    async def publish(self, rates: dict[str, float]) -> int:
        """Write the rates that moved into their Adapters' annotations; returns how many."""
        written = 0
        for adapter_id, adapter in self._adapters.items():
            new = rates.get(adapter_id, 0.0)
            if not self._moved(adapter.annotated, new):
                continue
            value = f"{new:.3g}"
            try:
                await self.api.patch_annotations(
                    *ADAPTERS,
                    namespace=adapter.namespace,
                    name=adapter.name,
                    annotations={kn.ANNOTATION_REQUEST_RATE: value},
                )
            except BackendError as exc:
                log.warning("cannot write the request rate of %s: %s", adapter.name, exc)
                continue
            adapter.annotated = float(value)
            written += 1
        return written

    async def tick(self, now: float | None = None) -> None:
        """One period: refresh the Adapters, then write the rates that moved."""
        await self.refresh()
        rates = await self.rates(now)
        if rates is not None and await self.counts.may_write(2 * self.period_s):
            await self.publish(rates)

    # Lifecycle ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except BackendError as exc:
                log.warning("adapter traffic: %s", exc)
            except Exception:
                log.exception("adapter traffic: a period failed")
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lmaas-adapter-traffic")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.counts.aclose()
