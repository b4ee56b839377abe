"""Multi-LoRA serving, in vLLM's three places.

- which adapter sits in which device slot: `slot_table.SlotTable` (plain Python, used by the
  scheduler) and `manager.LoraManager` (host pool, loading, the device bank);
- where LoRA attaches: `layers.LoraLinear`, a wrapper around each base projection;
- how the batched maths runs: `ops.lora_shrink` / `ops.lora_expand` over the whole batch,
  laid out once per step by `mapping.LoraMapping`; on CPU, `kernel` (a compiled
  gather-GEMV, `bgmv.cpp`) for decode-sized groups.

This package's ``__init__`` imports nothing, so the torch-free slot table stays torch-free.
"""
