"""What the activator knows about one service: its replicas, who waits, when it was used.

Plain bookkeeping, no I/O. A service is *busy* while a request waits for it (held), runs
on one of its replicas (in flight, counted by the router's leases), or while it is being
scaled; the idle timer only runs while it is not busy.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from lmaas.gateway.activator.backend import ServiceInfo
from lmaas.gateway.routing import Replica

__all__ = ["ServiceState"]

_DEFAULT_COLD_START_S = 10.0


@dataclass(eq=False)
class ServiceState:
    """One service of the activator (see the module docstring)."""

    info: ServiceInfo
    replicas: dict[str, Replica] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """URL → why that replica's model could not load (its ``/readyz`` says ``failed``)."""
    held: int = 0
    active: bool = False
    """Replicas are asked for, as far as the activator knows (False once scaled to zero)."""
    last_active: float = field(default_factory=time.monotonic)
    checked_at: float = float("-inf")
    activation: asyncio.Task[None] | None = None
    activation_started: float | None = None
    deactivating: bool = False
    failure: tuple[float, str] | None = None
    """When and why the last activation failed (the model could not load)."""
    last_cold_start_s: float | None = None
    shared_at: float = float("-inf")
    """When this gateway last told the others (the activity ledger) it uses the service."""
    followed_at: float = float("-inf")
    """When the running service was last brought to its plan."""
    scale_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retired: list[Replica] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.info.key

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.ready]

    def retire(self, url: str) -> None:
        """Forget the replica at `url`; its leases still count until released."""
        replica = self.replicas.pop(url, None)
        self.failed.pop(url, None)
        if replica is not None:
            replica.ready = False
            if replica.in_flight > 0:
                self._retired.append(replica)

    def retire_all(self) -> None:
        for url in list(self.replicas):
            self.retire(url)

    def in_flight(self) -> int:
        self._retired = [r for r in self._retired if r.in_flight > 0]
        return sum(r.in_flight for r in self.replicas.values()) + sum(
            r.in_flight for r in self._retired
        )

    def activating(self) -> bool:
        return self.activation is not None and not self.activation.done()

    def busy(self) -> bool:
        return self.held > 0 or self.in_flight() > 0 or self.activating() or self.deactivating

    def idle_for(self, now: float) -> float:
        return now - self.last_active

    def should_scale_to_zero(self, now: float) -> bool:
        timeout = self.info.idle_timeout_s
        return (
            self.info.scale_to_zero
            and timeout > 0
            and self.active
            and not self.busy()
            and self.idle_for(now) >= timeout
        )

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: what is left of a typical cold start."""
        expected = self.last_cold_start_s or _DEFAULT_COLD_START_S
        elapsed = 0.0
        if self.activating() and self.activation_started is not None:
            elapsed = time.monotonic() - self.activation_started
        return int(min(60, max(5, math.ceil(expected - elapsed))))
