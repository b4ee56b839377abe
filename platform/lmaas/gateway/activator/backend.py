"""The seam between the activator and what actually runs runtimes: `ScaleBackend`.

The activator decides *when* a service scales (a request for a service at zero, an idle
timer); a backend does it and says where the replicas are. Two implement it: the embedded
one of `lmaas up` (runtime processes on this machine) and the Kubernetes one (a
ModelService's Deployments). Backends raise `BackendError` for failures they cannot hide
(the API server refused, a process could not start); the activator retries those until
the request's activation timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lmaas.gateway.routing import TenantRef

__all__ = ["BackendError", "ScaleBackend", "ServiceInfo"]


class BackendError(Exception):
    """The backend could not scale or list a service (the message says why)."""


@dataclass(frozen=True)
class ServiceInfo:
    """One scalable service: the replicas serving one model, scaled together.

    `key` names it uniquely within its backend (embedded: the model name; Kubernetes:
    ``namespace/model-service``). `scale_to_zero` says whether the activator may scale it
    to zero after `idle_timeout_s` seconds without requests (0 = never).
    """

    key: str
    model: str
    scale_to_zero: bool
    idle_timeout_s: float
    tenant: str | None = None
    """The tenant owning the service (its name); None = shared by every tenant."""


class ScaleBackend(Protocol):
    """Starts and stops the replicas of services; every method is safe to repeat."""

    async def start(self) -> None:
        """Prepare (clean up what a previous gateway left behind)."""
        ...

    async def lookup(self, model: str, tenant: TenantRef | None = None) -> ServiceInfo | None:
        """The service serving `model` to `tenant`, or None when nothing does.

        The tenant's own service of the model first, else a shared one; never another
        tenant's (`tenant` None: shared services only).
        """
        ...

    async def current_replicas(self, service: ServiceInfo) -> int:
        """Replicas asked for now (ready or not); 0 = scaled to zero."""
        ...

    async def scale_up(self, service: ServiceInfo) -> int:
        """Ask for the service's active size (no-op if already there); returns that size."""
        ...

    async def follow_plan(self, service: ServiceInfo) -> tuple[int, int]:
        """Bring a service that runs (replicas > 0) to its current plan, which may have
        changed since it was scaled up; a service at zero stays at zero. Returns the
        replicas asked for before and after."""
        ...

    async def scale_to_zero(self, service: ServiceInfo) -> None:
        """Stop every replica of the service."""
        ...

    async def endpoints(self, service: ServiceInfo) -> Sequence[str]:
        """Base URLs of the service's replicas that exist now (ready or still starting)."""
        ...

    async def discard(self, service: ServiceInfo, url: str) -> None:
        """The replica at `url` failed for good (its model cannot load): replace it."""
        ...

    def placed_adapters(self, url: str) -> set[str]:
        """Ids of the adapters placed on the replica at `url` (routing prefers it for them)."""
        ...

    async def aclose(self) -> None:
        """Release the backend (the embedded one stops its processes)."""
        ...
