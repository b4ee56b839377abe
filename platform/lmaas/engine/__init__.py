"""The inference engine: model loading, paged KV cache, scheduler, LoRA bank, sampler.

`lmaas.engine.interface.InferenceEngine` is what the runtime process drives; the modules
beside it implement it.
"""
