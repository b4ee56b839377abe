"""The inference engine: model loading, paged KV cache, scheduler, LoRA bank, sampler.

`lmaas.engine.interface.InferenceEngine` is what the runtime process drives;
`async_engine.AsyncEngine` implements it (build it with `AsyncEngine.from_settings`).
The pieces, one concept per module:

- `llm_engine.LLMEngine` — the step loop: schedule, run, sample, post-process;
- `scheduler.Scheduler`, `block_manager.BlockManager`, `sequence.Sequence`,
  `fair_share.VirtualTokenCounter` — continuous batching, chunked prefill, preemption,
  paged-cache bookkeeping with prefix sharing, fairness between tenants (torch-free);
- `forward_batch.ForwardBatch` — the explicit per-step batch the model receives;
- `model_runner.ModelRunner`, `model/` (the Llama-family model, paged attention, RoPE,
  loader), `kv_cache.KVCache`;
- `lora/` — slot table, host pool and device bank, the `LoraLinear` wrapper, the batched
  shrink/expand ops;
- `sampler.Sampler`, `tokenizer.Tokenizer`, `detokenizer` (streaming text and stops),
  `input_processor` / `output_processor` (requests in, events out);
- `model_files.materialize_model` and `gguf_file` — GGUF → safetensors, once;
- `speculator.Speculator` — speculative decoding in the step loop (`speculation/`).
"""
