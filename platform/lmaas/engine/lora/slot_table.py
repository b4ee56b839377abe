"""Which adapter sits in which device slot: reference counts, LRU eviction, pending loads.

Plain Python (no torch): the scheduler asks for a slot when it admits a sequence and gives
it back when the sequence leaves the running batch. A slot whose adapter no running
sequence uses may be handed to another adapter (least recently used first). Loads are
queued as `(slot, adapter_id)` for the model runner to copy before the next forward pass;
at most `max_loads_per_step` per step, so loading never stalls a running batch for long.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["SlotTable"]


class SlotTable:
    def __init__(self, num_slots: int, max_loads_per_step: int = 4) -> None:
        if num_slots < 0:
            raise ValueError(f"num_slots must not be negative, got {num_slots}")
        self.num_slots = num_slots
        self.max_loads_per_step = max(1, max_loads_per_step)
        self._slot_of: dict[str, int] = {}
        self._adapter_in: list[str | None] = [None] * num_slots
        self._refs: dict[str, int] = {}
        # Unreferenced resident adapters, least recently used first.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._pending: list[tuple[int, str]] = []
        self._loads_this_step = 0

    def begin_step(self) -> None:
        self._loads_this_step = 0

    def slot_of(self, adapter_id: str) -> int | None:
        return self._slot_of.get(adapter_id)

    def resident(self) -> dict[str, int]:
        return dict(self._slot_of)

    def num_refs(self, adapter_id: str) -> int:
        return self._refs.get(adapter_id, 0)

    def acquire(self, adapter_id: str) -> int | None:
        """A slot holding `adapter_id` for one more sequence, or None if none can be had now."""
        slot = self._slot_of.get(adapter_id)
        if slot is not None:
            self._idle.pop(adapter_id, None)
            self._refs[adapter_id] = self._refs.get(adapter_id, 0) + 1
            return slot
        if self._loads_this_step >= self.max_loads_per_step:
            return None
        slot = self._free_slot()
        if slot is None:
            return None
        self._slot_of[adapter_id] = slot
        self._adapter_in[slot] = adapter_id
        self._refs[adapter_id] = 1
        self._pending.append((slot, adapter_id))
        self._loads_this_step += 1
        return slot

    def release(self, adapter_id: str) -> None:
        refs = self._refs.get(adapter_id, 0) - 1
        if refs < 0:
            raise ValueError(f"adapter {adapter_id!r} released more often than acquired")
        self._refs[adapter_id] = refs
        if refs == 0 and adapter_id in self._slot_of:
            self._idle[adapter_id] = None

    def evict(self, adapter_id: str) -> bool:
        """Free the slot of an unused adapter; False if a running sequence still uses it."""
        if self._refs.get(adapter_id, 0) > 0:
            return False
        slot = self._slot_of.pop(adapter_id, None)
        self._idle.pop(adapter_id, None)
        self._refs.pop(adapter_id, None)
        if slot is not None:
            self._adapter_in[slot] = None
            self._pending = [(s, a) for s, a in self._pending if s != slot]
        return True

    def take_pending_loads(self) -> list[tuple[int, str]]:
        """The `(slot, adapter_id)` copies to do before the next forward pass."""
        pending, self._pending = self._pending, []
        return pending

    def _free_slot(self) -> int | None:
        for slot, held in enumerate(self._adapter_in):
            if held is None:
                return slot
        if not self._idle:
            return None
        victim, _ = self._idle.popitem(last=False)
        slot = self._slot_of.pop(victim)
        self._refs.pop(victim, None)
        self._adapter_in[slot] = None
        return slot
