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


def test_a_draft_cut_from_the_default_model_runs_on_the_paged_backend(smollm2: Path) -> None:
    """A 4-layer draft of SmolLM2 with a reduced vocabulary (what `draft_builder` makes):
    the engine's paged draft computes its logits, and greedy answers stay exact."""
    from transformers import AutoModelForCausalLM

    from lmaas.engine.speculation.paged_draft import PagedDraftBackend, load_paged_draft
    from lmaas.engine.speculation.proposer import HFDraftBackend
    from lmaas.engine.speculator import Speculator
    from lmaas.finetune.draft_builder import build_draft

    target = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    draft = build_draft(target, [0, 1, 2, 29], list(range(8192)))
    paged = PagedDraftBackend(
        load_paged_draft(draft, dtype=torch.float32, device=torch.device("cpu")),
        num_tokens=512,
        block_size=16,
    )
    ids = [[1, 504, 3458, 282, 4649, 314], [1, 22, 23]]
    want = HFDraftBackend(draft).forward(["a", "b"], ids)
    got = paged.forward(["a", "b"], ids)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    assert torch.allclose(got[finite], want[finite], atol=1e-3)

    request = GenerateRequest(
        request_id="q",
        messages=[ChatMessage(role="user", content="What is the capital of France?")],
        sampling=SamplingParams(max_tokens=24, temperature=0),
    )
    limits = dict(kv_cache_bytes=64 << 20, block_size=16)
    plain = make_engine(smollm2, torch.device("cpu"), **limits)
    want_text = "".join(e.text for e in plain.generate([request.model_copy()])["q"])
    engine = make_engine(smollm2, torch.device("cpu"), **limits)
    engine.speculator = Speculator(engine.load_draft_proposer(draft), max_k=3, policy="fixed:3")
    got_text = "".join(e.text for e in engine.generate([request.model_copy()])["q"])
    assert got_text == want_text
    assert engine.stats()["speculation"]["proposed_tokens"] > 0
