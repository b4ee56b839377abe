"""When a service was last used, as every gateway replica sees it (`ActivityLedger`).

Each gateway holds its own requests, so alone it only knows its own idle time; with
several gateways in front of one service, one of them could find the service idle while
another is streaming from it. Before scaling a service to zero, the activator asks the
ledger how long the service has been idle *anywhere*: `RedisActivity` (when
``LMAAS_REDIS_URL`` is set) keeps one timestamp per service in Redis, written by whichever
gateway is busy with it and read with Redis's own clock (no skew between pods).
`LocalActivity` is the one-gateway case: it knows nothing more than the activator.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ActivityLedger", "LocalActivity", "RedisActivity"]

# The time is Redis's (TIME), so gateways' clocks never matter.
_TOUCH = """
local t = redis.call('TIME')
redis.call('SET', KEYS[1], t[1] .. '.' .. string.format('%06d', t[2]), 'EX', ARGV[1])
return 1
"""
_IDLE = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local t = redis.call('TIME')
return tostring(tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(v))
"""


class ActivityLedger(Protocol):
    async def touch(self, service: str, *, keep_s: float) -> None:
        """`service` is in use now (remember it for at least `keep_s` seconds)."""
        ...

    async def idle_for(self, service: str) -> float | None:
        """Seconds since any gateway last touched `service`; None if none did (or forgot)."""
        ...

    async def aclose(self) -> None: ...


class LocalActivity:
    """One gateway: no other gateway's activity to know about."""

    async def touch(self, service: str, *, keep_s: float) -> None:
        return None

    async def idle_for(self, service: str) -> float | None:
        return None

    async def aclose(self) -> None:
        return None


class RedisActivity:
    """The last use of each service in Redis, shared by every gateway replica."""

    def __init__(self, url: str, *, prefix: str = "lmaas") -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self._prefix = prefix.rstrip(":")
        self._touch = self._redis.register_script(_TOUCH)
        self._idle = self._redis.register_script(_IDLE)

    def _key(self, service: str) -> str:
        return f"{self._prefix}:activator:last-active:{service}"

    async def touch(self, service: str, *, keep_s: float) -> None:
        await self._touch(keys=[self._key(service)], args=[max(1, int(keep_s))])

    async def idle_for(self, service: str) -> float | None:
        value = await self._idle(keys=[self._key(service)])
        return None if value is None else max(0.0, float(value))

    async def aclose(self) -> None:
        await self._redis.aclose()
