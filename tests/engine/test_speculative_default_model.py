"""Speculative decoding on the default model (SmolLM2-135M-Instruct) on CPU, prompt lookup.

Slow (the 30-layer model decodes some 60 tokens twice). A grounded request — "repeat this
text" — is where prompt lookup shines: the answer copies the prompt, so most proposals
hold. The answer must be the same text as without speculation, in fewer target passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmaas.protocol import ChatMessage, GenerateRequest, SamplingParams
from tests.engine.conftest import make_engine

pytestmark = pytest.mark.slow

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump."
)


def test_prompt_lookup_repeats_a_text_in_fewer_passes(smollm2: Path) -> None:
    request = GenerateRequest(
        request_id="repeat",
        messages=[ChatMessage(role="user", content=f"Repeat this text exactly: {TEXT}")],
        sampling=SamplingParams(max_tokens=48, temperature=0),
    )
    limits = dict(kv_cache_bytes=64 << 20, block_size=16, max_batched_tokens=256)
    runs = {}
    for policy in ("off", "smartspec"):
        engine = make_engine(
            smollm2,
            torch.device("cpu"),
            speculation=policy,
            speculation_max_k=4,
            speculation_proposer="prompt_lookup",
            **limits,
        )
        events = engine.generate([request.model_copy()])["repeat"]
        runs[policy] = ("".join(e.text for e in events), engine)
    text, plain = runs["off"]
    assert "quick brown fox" in text  # the model does repeat it
    spec_text, spec = runs["smartspec"]
    assert spec_text == text
    figures = spec.stats()["speculation"]
    assert figures["accepted_tokens"] > 10
    assert spec.num_forward_passes < 0.75 * plain.num_forward_passes, (
        spec.num_forward_passes,
        plain.num_forward_passes,
        figures,
    )
