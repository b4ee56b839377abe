"""The model: a Llama-family transformer (Llama, SmolLM2, Mistral, Qwen2 layouts) over a flat batch."""
