"""Fair sharing between tenants: the virtual token counter (S-LoRA's VTC).

Each tenant has a counter of the service it received, in weighted tokens (`input_weight`
per prompt token computed, `output_weight` per generated token). Work is admitted from
the waiting tenant with the smallest counter. A tenant that becomes active after being
idle is lifted to the smallest counter of the active tenants, so it can neither bank idle
time to starve others later nor be starved by tenants that were served while it slept.
Plain Python (no torch).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["VirtualTokenCounter"]


class VirtualTokenCounter:
    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0) -> None:
        if input_weight < 0 or output_weight < 0:
            raise ValueError("token weights must not be negative")
        self.input_weight = input_weight
        self.output_weight = output_weight
        self._counters: dict[str, float] = {}

    def counter(self, tenant_id: str) -> float:
        return self._counters.get(tenant_id, 0.0)

    def activate(self, tenant_id: str, active_tenant_ids: Iterable[str]) -> None:
        """`tenant_id` has work again: lift it to the least-served active tenant."""
        others = [self._counters.get(t, 0.0) for t in active_tenant_ids if t != tenant_id]
        current = self._counters.get(tenant_id, 0.0)
        self._counters[tenant_id] = max(current, min(others)) if others else current

    def charge(self, tenant_id: str, *, input_tokens: int = 0, output_tokens: int = 0) -> None:
        self._counters[tenant_id] = (
            self._counters.get(tenant_id, 0.0)
            + self.input_weight * input_tokens
            + self.output_weight * output_tokens
        )

    def order(self, tenant_ids: Iterable[str]) -> list[str]:
        """`tenant_ids`, least served first (ties by name, for determinism)."""
        return sorted(tenant_ids, key=lambda t: (self._counters.get(t, 0.0), t))

    def forget(self, tenant_id: str) -> None:
        self._counters.pop(tenant_id, None)
