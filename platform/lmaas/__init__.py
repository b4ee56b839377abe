"""lmaas: multi-tenant LLM-as-a-service (OpenAI-compatible, batched multi-LoRA, on Kubernetes)."""

__version__ = "0.1.0"
