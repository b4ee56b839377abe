"""Which adapters the engine knows, where they are, and moving them host ↔ device.

The host pool keeps validated adapters in memory, least recently used first, up to
`host_pool_size`; pinned adapters and adapters that requests still use are never dropped.
The device bank has a fixed number of slots; `SlotTable` (shared with the scheduler) says
which adapter occupies which slot, and `apply_pending_loads` copies the adapters the
scheduler just placed into their slots before the forward pass. Reading and validating
an adapter from disk happens off the step path (`read`, called from a worker thread).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from lmaas.engine.lora.adapter import AdapterError, LoraAdapter, load_peft_adapter
from lmaas.engine.lora.bank import LoraBank
from lmaas.engine.lora.slot_table import SlotTable
from lmaas.engine.model.model_config import ModelConfig

__all__ = ["LoraManager"]


class LoraManager:
    def __init__(
        self,
        model_config: ModelConfig,
        *,
        num_slots: int,
        host_pool_size: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
        max_loads_per_step: int = 4,
    ) -> None:
        self.model_config = model_config
        self.max_rank = max_rank
        self.host_pool_size = max(1, host_pool_size)
        self.slots = SlotTable(num_slots, max_loads_per_step=max_loads_per_step)
        self.bank = LoraBank(num_slots, dtype=dtype, device=device)
        self._host: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._pinned: set[str] = set()
        self._lock = threading.Lock()

    # Host pool (any thread) ------------------------------------------------------------

    def read(self, adapter_id: str, folder: Path | str) -> LoraAdapter:
        """Read and validate an adapter from disk (slow: call off the step loop)."""
        adapter = load_peft_adapter(adapter_id, folder, self.model_config, max_rank=self.max_rank)
        if torch.device(self.bank.device).type == "cuda":
            adapter.weights = {
                k: (a.pin_memory(), b.pin_memory()) for k, (a, b) in adapter.weights.items()
            }
        return adapter

    def add(self, adapter: LoraAdapter, *, pin: bool, in_use: Callable[[str], bool]) -> None:
        """Put `adapter` in the host pool (replacing one of the same id), evicting LRU ones."""
        with self._lock:
            self._host[adapter.adapter_id] = adapter
            self._host.move_to_end(adapter.adapter_id)
            if pin:
                self._pinned.add(adapter.adapter_id)
            else:
                self._pinned.discard(adapter.adapter_id)
            for victim in list(self._host):
                if len(self._host) <= self.host_pool_size:
                    break
                if victim in self._pinned or victim == adapter.adapter_id or in_use(victim):
                    continue
                if self.slots.evict(victim):
                    del self._host[victim]

    def get(self, adapter_id: str) -> LoraAdapter | None:
        with self._lock:
            adapter = self._host.get(adapter_id)
            if adapter is not None:
                self._host.move_to_end(adapter_id)
            return adapter

    def has(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id in self._host

    def remove(self, adapter_id: str) -> bool:
        """Forget an adapter no sequence uses; False if one still does."""
        with self._lock:
            slot = self.slots.slot_of(adapter_id)
            if not self.slots.evict(adapter_id):
                return False
            if slot is not None:
                self.bank.slot_adapter[slot] = None
            self._host.pop(adapter_id, None)
            self._pinned.discard(adapter_id)
            return True

    def states(self) -> list[tuple[str, int, str, bool]]:
        """(adapter_id, rank, "device" | "host", pinned) for every known adapter."""
        with self._lock:
            resident = self.slots.resident()
            return [
                (aid, a.rank, "device" if aid in resident else "host", aid in self._pinned)
                for aid, a in self._host.items()
            ]

    # Device bank (step loop only) --------------------------------------------------------

    def apply_pending_loads(self) -> list[str]:
        """Copy the adapters the scheduler placed this step into their slots."""
        loaded = []
        for slot, adapter_id in self.slots.take_pending_loads():
            adapter = self.get(adapter_id)
            if adapter is None:
                raise AdapterError(f"adapter {adapter_id!r} was dropped before it could be loaded")
            self.bank.load(slot, adapter)
            loaded.append(adapter_id)
        return loaded
