"""Helpers of the fine-tuning tests: tiny models and small chat datasets."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

__all__ = ["arithmetic_chats", "build_tiny_llama", "write_jsonl"]


def build_tiny_llama(
    folder: Path, tokenizer_dir: Path, *, tied: bool = True, seed: int = 0
) -> Path:
    """A random 2-layer Llama (hidden 32) with SmolLM2's tokenizer, saved in `folder`."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        max_position_embeddings=512,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def arithmetic_chats(n: int, seed: int = 0) -> list[dict[str, object]]:
    """`n` small, learnable conversations (deterministic)."""
    rows = []
    for i in range(n):
        a, b = (i * 7 + seed) % 10, (i * 3 + seed) % 10
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You add numbers."},
                    {"role": "user", "content": f"{a} + {b}?"},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}"},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
